"""The light CPU backbone: shapes, size, and that it stays much cheaper than a CIFAR ResNet-18."""

from __future__ import annotations

import pytest
import torch

from trainer.models import build_backbone
from trainer.models.convnet import ConvNet


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_output_shape(channels, size):
    model = build_backbone("convnet", in_channels=channels, width=32).eval()
    assert model.out_dim == 128
    with torch.no_grad():
        out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 128)
    assert torch.isfinite(out).all()


def test_parameter_budget():
    params = sum(p.numel() for p in build_backbone("convnet", 1, 32).parameters())
    assert 300_000 <= params <= 1_500_000
    assert sum(p.numel() for p in build_backbone("convnet", 1, 16).parameters()) < params


def test_resnet_style_names():
    keys = list(build_backbone("convnet", 1, 16).state_dict())
    assert keys[0] == "conv1.weight"
    assert "layer2.0.downsample.0.weight" in keys and "layer3.1.conv2.weight" in keys


def test_custom_stages():
    model = ConvNet(in_channels=1, width=8, blocks=(1, 1, 1, 1))
    assert model.out_dim == 64
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 64)


def test_backward_and_zero_init():
    model = build_backbone("convnet", 1, 8, zero_init_residual=True)
    assert bool((model.layer3[1].bn2.weight == 0).all())
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cheaper_than_cifar_resnet18():
    """Counted multiply-adds of the convolutions (deterministic, unlike wall time)."""

    def conv_macs(model, size):
        total = 0

        def hook(module, inputs, output):
            nonlocal total
            k = module.weight[0].numel()  # in/groups * kh * kw
            total += output.numel() * k

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            model.eval()(torch.rand(1, 1, size, size))
        for h in handles:
            h.remove()
        return total

    light = conv_macs(build_backbone("convnet", 1, 32), 28)
    heavy = conv_macs(build_backbone("resnet18_cifar", 1, 32), 28)
    assert light * 4 < heavy
