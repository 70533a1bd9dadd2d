"""A light residual backbone for fast CPU runs on small images (28-32 px).

Layout (``width = w``)::

    conv1 3x3 stride 2 (in -> w) + BN + ReLU          28 px -> 14 px
    layer1: 1 basic block,  w channels, stride 1       14 px
    layer2: 2 basic blocks, 2w channels, stride 2       7 px
    layer3: 2 basic blocks, 4w channels, stride 2       4 px
    global average pool                                -> (N, 4w)

Why this shape: on a CPU the cost of a small-image network is dominated by the full-resolution
activations (their convolutions and the memory-bound BN/ReLU passes over them). Taking the
stride in the stem, and putting the extra depth in the low-resolution stages where it is cheap,
makes a forward+backward pass about ten times cheaper than a CIFAR-stem ResNet-18 of the same
width while keeping ~0.7M parameters at ``w = 32`` (11 convolutions, residual throughout).

Names follow the ResNet layout (``conv1``, ``bn1``, ``layerN.i.*``, ``layerN.0.downsample.*``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from trainer.models.resnet import BasicBlock


class ConvNet(nn.Module):
    """Small ResNet-style trunk; ``forward(x) -> (N, out_dim)`` with ``out_dim = width * 2**(stages-1)``."""

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        blocks: Sequence[int] = (1, 2, 2),
        stem_stride: int = 2,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be positive, got {width} and {in_channels}")
        if not blocks or any(n < 1 for n in blocks):
            raise ValueError(f"each stage needs at least one block, got {tuple(blocks)}")
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        channels = width
        for index, count in enumerate(blocks):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(count):
                stage.append(BasicBlock(channels, planes, stride if b == 0 else 1))
                channels = planes
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels
        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return torch.flatten(self.avgpool(x), 1)


def convnet(in_channels: int = 3, width: int = 32, zero_init_residual: bool = False) -> ConvNet:
    """The default light backbone: stride-2 stem, stages (w, 2w, 4w) with (1, 2, 2) basic blocks."""
    return ConvNet(in_channels, width, zero_init_residual=zero_init_residual)
