"""ResNet-18 for 32 px images (as in the robustness library): 3x3 stem, no max-pool.

Taps at 32 px (width 64): layer1 64x32x32, layer2 128x16x16, layer3 256x8x8, layer4 512x4x4.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CIFAR10_MEAN, CIFAR10_STD, Encoder, Normalize
from .registry import register


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(Encoder):
    taps = ("layer1", "layer2", "layer3", "layer4")
    input_size = 32

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        name: str = "resnet18_cifar",
    ):
        arch = dict(name=name, num_classes=num_classes, width=width, blocks=list(blocks))
        super().__init__(Normalize(CIFAR10_MEAN, CIFAR10_STD), arch)
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        for i, n in enumerate(blocks):
            cout, stride = width * 2**i, (1 if i == 0 else 2)
            stage = [BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                     for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.linear = nn.Linear(cin, num_classes)

    def layers(self) -> Iterator[tuple[str | None, nn.Module]]:
        yield None, self.conv1
        yield None, self.bn1
        yield None, self.relu
        for tap in self.taps:
            yield tap, getattr(self, tap)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


@register("encoder")
def resnet18_cifar(num_classes: int = 10, **kw) -> ResNetCifar:
    return ResNetCifar(num_classes=num_classes, **kw)


@register("encoder")
def resnet18_cifar_small(num_classes: int = 10, **kw) -> ResNetCifar:
    """Quarter-width ResNet-18 (layer4: 128 x 4 x 4 at 32 px) for CPU demos and tests."""
    return ResNetCifar(num_classes=num_classes, name="resnet18_cifar_small", **{"width": 16, **kw})
