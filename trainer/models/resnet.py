"""ResNet feature extractors (He et al., 2016) with parameter names compatible with common checkpoints.

The module and parameter names follow the usual torchvision layout (``conv1``, ``bn1``,
``layer{1..4}.{i}.conv{1,2,3}``, ``layer{N}.0.downsample.{0,1}``), minus the classifier ``fc``,
so ImageNet weights and SCAN/SimCLR checkpoints load by name. ``forward`` returns globally
average-pooled features of size ``out_dim``.

Two stems:

* ``imagenet``: 7x7 stride-2 convolution, BN, ReLU, 3x3 stride-2 max-pool (inputs of 96 px and up);
* ``cifar``: 3x3 stride-1 convolution, BN, ReLU, no pooling (inputs of 28-32 px).

``width`` is the channel count of the first stage (64 for the standard network); every stage
scales with it, so ``out_dim`` is ``512 * width / 64`` (basic blocks) or ``2048 * width / 64``
(bottlenecks).
"""

from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
from torch import nn

STEMS = ("imagenet", "cifar")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> Optional[nn.Sequential]:
    """1x1 projection + BN when the residual changes shape, else None (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(_conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + skip)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + skip)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """A ResNet trunk ending in global average pooling; ``forward(x) -> (N, out_dim)``."""

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown ResNet stem {stem!r}; choose one of {', '.join(STEMS)}")
        if len(layers) != 4:
            raise ValueError(f"a ResNet has 4 stages, got {len(layers)} block counts")
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be positive, got {width} and {in_channels}")
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(in_channels, width)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

        channels = width
        for index, count in enumerate(layers):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for b in range(count):
                blocks.append(block(channels, planes, stride if b == 0 else 1))
                channels = planes * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels
        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """Kaiming-normal (fan-out) convolutions, unit/zero BN; optionally zero each block's last BN gamma."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18(in_channels: int = 3, width: int = 64, stem: str = "imagenet", zero_init_residual: bool = False) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]; ``out_dim = 512 * width / 64``."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, width, stem, zero_init_residual)


def resnet34(in_channels: int = 3, width: int = 64, stem: str = "imagenet", zero_init_residual: bool = False) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]; ``out_dim = 512 * width / 64``."""
    return ResNet(BasicBlock, (3, 4, 6, 3), in_channels, width, stem, zero_init_residual)


def resnet50(in_channels: int = 3, width: int = 64, stem: str = "imagenet", zero_init_residual: bool = False) -> ResNet:
    """ResNet-50: bottlenecks [3, 4, 6, 3]; ``out_dim = 2048 * width / 64``."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, width, stem, zero_init_residual)
