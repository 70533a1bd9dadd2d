"""ResNet backbones: torchvision-compatible names and shapes, parameter counts, stems, initialization."""

from __future__ import annotations

import pytest
import torch

from trainer.models.resnet import resnet18, resnet50

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN_KEYS]


def expected_keys(layers: list[int], convs_per_block: int, downsample_in_layer1: bool) -> list[str]:
    """torchvision's ResNet state-dict keys minus fc, written out from the architecture."""
    keys = ["conv1.weight", *_bn("bn1")]
    for stage, count in enumerate(layers, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for conv in range(1, convs_per_block + 1):
                keys += [f"{prefix}.conv{conv}.weight", *_bn(f"{prefix}.bn{conv}")]
            if block == 0 and (stage > 1 or downsample_in_layer1):
                keys += [f"{prefix}.downsample.0.weight", *_bn(f"{prefix}.downsample.1")]
    return keys


def test_resnet18_keys_match_torchvision_layout():
    state = resnet18().state_dict()
    expected = expected_keys([2, 2, 2, 2], convs_per_block=2, downsample_in_layer1=False)
    assert list(state) == expected
    assert len(expected) == 120  # torchvision's 122 minus fc.weight, fc.bias
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "layer4.1.bn2.running_var": (512,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


def test_resnet50_keys_match_torchvision_layout():
    state = resnet50().state_dict()
    expected = expected_keys([3, 4, 6, 3], convs_per_block=3, downsample_in_layer1=True)
    assert list(state) == expected
    assert len(expected) == 318  # torchvision's 320 minus fc
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),  # the stride sits on the 3x3 (ResNet v1.5)
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert resnet50().layer2[0].conv2.stride == (2, 2)


def test_parameter_counts_without_fc():
    assert sum(p.numel() for p in resnet18().parameters()) == 11_176_512
    assert sum(p.numel() for p in resnet50().parameters()) == 23_508_032


def test_out_dim_scales_with_width():
    assert resnet18().out_dim == 512
    assert resnet18(width=32).out_dim == 256
    assert resnet50().out_dim == 2048
    assert resnet50(width=16).out_dim == 512


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_cifar_stem_shapes(channels, size):
    model = resnet18(in_channels=channels, width=16, stem="cifar").eval()
    assert tuple(model.conv1.weight.shape) == (16, channels, 3, 3)
    assert model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()


def test_imagenet_stem_at_96px():
    model = resnet18(width=16).eval()
    assert model.conv1.stride == (2, 2) and isinstance(model.maxpool, torch.nn.MaxPool2d)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 128)
    model50 = resnet50(width=8).eval()
    with torch.no_grad():
        assert model50(torch.rand(2, 3, 96, 96)).shape == (2, 256)


def test_backward_reaches_every_parameter():
    model = resnet18(in_channels=1, width=8, stem="cifar")
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_zero_init_residual_option():
    default = resnet18(width=8)
    assert all(bool((b.bn2.weight == 1).all()) for layer in (default.layer1, default.layer4) for b in layer)
    zeroed = resnet18(width=8, zero_init_residual=True)
    for layer in (zeroed.layer1, zeroed.layer2, zeroed.layer3, zeroed.layer4):
        for block in layer:
            assert bool((block.bn2.weight == 0).all())
            assert bool((block.bn1.weight == 1).all())
    bottleneck = resnet50(width=8, zero_init_residual=True)
    assert all(bool((b.bn3.weight == 0).all()) for b in bottleneck.layer3)
    assert bool((bottleneck.bn1.weight == 1).all())


def test_kaiming_init_for_convs():
    torch.manual_seed(0)
    conv = resnet18().layer3[0].conv1.weight  # fan_out = 256 * 9
    expected_std = (2.0 / (256 * 9)) ** 0.5
    assert abs(conv.std().item() - expected_std) / expected_std < 0.05


def test_unknown_stem_rejected():
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="tiny")
