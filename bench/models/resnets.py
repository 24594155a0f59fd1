"""GPU-scale residual networks: PreAct-ResNet-18 (He et al. 2016) and Wide ResNets (Zagoruyko &
Komodakis 2016) as used by Madry-style CIFAR benchmarks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bench.models.base import Normalize, register_model


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3 with a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = drop
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        if self.drop:
            out = F.dropout(out, self.drop, self.training)
        return self.conv2(out) + skip


class _ResNet(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float], in_channels: int, stem: int,
                 stages: list[tuple[int, int, int]], num_classes: int, drop: float = 0.0) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        blocks, cin = [], stem
        for width, count, stride in stages:
            for index in range(count):
                blocks.append(PreActBlock(cin, width, stride if index == 0 else 1, drop))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(self.normalize(x)))
        out = F.relu(self.bn(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("preact-resnet18", paper="He et al. 2016; Wong et al. 2020 (Fast-AT)", family="cifar")
def preact_resnet18(input_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                    std: Sequence[float], width: int = 64) -> nn.Module:
    """Pre-activation ResNet-18: four stages of two blocks, widths 64-128-256-512 (``width``
    sets the first stage's and scales the rest: 8 gives a width-reduced network for CPU tests)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return _ResNet(mean, std, input_shape[0], width,
                   [(width, 2, 1), (2 * width, 2, 2), (4 * width, 2, 2), (8 * width, 2, 2)], num_classes)


@register_model("wrn-28-10", paper="Zagoruyko & Komodakis 2016; Madry et al. 2018", family="cifar")
def wide_resnet(input_shape: Sequence[int], num_classes: int, mean: Sequence[float],
                std: Sequence[float], depth: int = 28, widen_factor: int = 10,
                dropout: float = 0.0) -> nn.Module:
    """Wide ResNet WRN-depth-k: three stages of (depth-4)/6 pre-activation blocks, widths 16k-32k-64k.

    ``depth=34`` gives the WRN-34-10 of TRADES and the L2L code."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 (e.g. 28, 34), got {depth}")
    count = (depth - 4) // 6
    k = widen_factor
    return _ResNet(mean, std, input_shape[0], 16,
                   [(16 * k, count, 1), (32 * k, count, 2), (64 * k, count, 2)], num_classes, dropout)
