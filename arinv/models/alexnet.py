"""AlexNet (the seed's encoder): convs 64-192-384-256-256, 1000-way head.

The convolutional trunk lives in ``self.convs`` (``features`` is the tap method every encoder
has), but state dicts use torchvision's names (``features.N``, ``classifier.N``), so
``encoder.load_state_dict(torchvision_alexnet.state_dict())`` works unchanged. Taps, at 224 px:

    conv1  64 x 27 x 27   after the first max-pool   (convs[0:3])
    conv2 192 x 13 x 13   after the second max-pool  (convs[3:6])
    conv5 256 x  6 x  6   after the last max-pool    (convs[6:13])
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from .base import IMAGENET_MEAN, IMAGENET_STD, Encoder, Normalize
from .registry import register

_TAP_AFTER = {2: "conv1", 5: "conv2", 12: "conv5"}  # index in ``convs`` -> tap name
_OURS, _TORCHVISION = "convs.", "features."


class AlexNet(Encoder):
    taps = ("conv1", "conv2", "conv5")

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        hidden: int = 4096,
        pool: int = 6,
        input_size: int = 224,
        dropout: float = 0.5,
        name: str = "alexnet",
    ):
        arch = dict(name=name, num_classes=num_classes, width=width, hidden=hidden, pool=pool)
        super().__init__(Normalize(IMAGENET_MEAN, IMAGENET_STD), arch)
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in (64, 192, 384, 256, 256))
        self.input_size = input_size
        self.convs = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(c5 * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        self.register_state_dict_post_hook(_to_torchvision_names)
        self.register_load_state_dict_pre_hook(_from_torchvision_names)

    def layers(self) -> Iterator[tuple[str | None, nn.Module]]:
        for i, module in enumerate(self.convs):
            yield _TAP_AFTER.get(i), module

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(h), 1))


def _rename(state_dict, prefix: str, old: str, new: str) -> None:
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        if k.startswith(prefix + old):
            k = prefix + new + k[len(prefix + old):]
        state_dict[k] = v


def _to_torchvision_names(module, state_dict, prefix, local_metadata) -> None:
    _rename(state_dict, prefix, _OURS, _TORCHVISION)


def _from_torchvision_names(module, state_dict, prefix, *args) -> None:
    _rename(state_dict, prefix, _TORCHVISION, _OURS)


@register("encoder")
def alexnet(num_classes: int = 1000, **kw) -> AlexNet:
    """The paper's encoder, at 224 px."""
    return AlexNet(num_classes=num_classes, **kw)


@register("encoder")
def alexnet_small(num_classes: int = 1000, **kw) -> AlexNet:
    """Quarter-width AlexNet at 128 px (conv5: 64 x 3 x 3) for CPU demos and tests."""
    kw = {"width": 0.25, "hidden": 512, "pool": 3, "input_size": 128, **kw}
    return AlexNet(num_classes=num_classes, name="alexnet_small", **kw)
