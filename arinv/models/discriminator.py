"""The conv5 discriminator (Table A5, after Dosovitskiy & Brox): it sees an image (real or
generated) together with the target conv5 map of the real image and scores "real".

Rows ``(layer, type, kernel, stride, pad, in_size, out_size, in_ch, out_ch)``. Two departures
from the printed table, both forced by its own numbers:

* its input column says 256 x 256, but 3x3 / stride 4 / pad 1 maps 224 (the generator's output)
  to the printed 56 and 256 to 64, so the input is 224 x 224;
* 2a (5x5, stride 1) reaches the printed 52 only without padding, and 2b (3x3, stride 2)
  cannot reach the printed 23 from 52 with any padding; we keep every kernel, stride and
  channel count and use pad 0 for 2a, 2b and 3a: 56 -> 52 -> 25 -> 23 -> 12, followed by
  global average pooling (the table's 11x11 pooling, at 1x1 output).

The final sigmoid of row 5b is folded into the loss (``BCEWithLogits``): ``forward`` returns
logits, which is the numerically stable form of the same model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from .registry import register

# D_1: image branch (conv + ReLU, with bias). Sizes as computed at 224 px (see above).
TABLE_A5_IMAGE = [
    ("1a", 3, 4, 1, 224, 56, 3, 32),  # the table says "conv2d + ReLU"; A4.1 and the text: LeakyReLU 0.2
    ("2a", 5, 1, 0, 56, 52, 32, 64),
    ("2b", 3, 2, 0, 52, 25, 64, 128),
    ("3a", 3, 1, 0, 25, 23, 128, 256),
    ("3b", 3, 2, 1, 23, 12, 256, 256),
]
# D_2: feature branch on the flattened conv5 map; D_3: joint classifier.
TABLE_A5_FEATURE = [("4a", 9216, 1024), ("4b", 1024, 512)]
TABLE_A5_JOINT = [("5a", 768, 512), ("5b", 512, 1)]


def _scaled(n: int, width: float) -> int:
    return max(4, round(n * width))


class Discriminator(nn.Module):
    def __init__(self, *, width: float = 1.0, feature_dim: int = 9216,
                 spectral_norm: bool = True, leak: float = 0.2, name: str = "alexnet_conv5"):
        super().__init__()
        self.arch = dict(name=name, width=width, feature_dim=feature_dim,
                         spectral_norm=spectral_norm)
        sn = _sn if spectral_norm else (lambda m: m)
        act = lambda: nn.LeakyReLU(leak, inplace=True)  # noqa: E731  (A4.1: LeakyReLU 0.2)
        self.image = nn.ModuleDict()
        for row, k, s, p, _, _, cin, cout in TABLE_A5_IMAGE:
            cin = cin if row == "1a" else _scaled(cin, width)
            self.image[row] = nn.Sequential(sn(nn.Conv2d(cin, _scaled(cout, width), k, s, p)), act())
        self.pool = nn.AdaptiveAvgPool2d(1)
        (_, _, f1), (_, _, f2) = TABLE_A5_FEATURE
        self.feature = nn.Sequential(
            nn.Linear(feature_dim, _scaled(f1, width)), act(),
            nn.Linear(_scaled(f1, width), _scaled(f2, width)), act(),
        )
        joint_in = _scaled(TABLE_A5_IMAGE[-1][-1], width) + _scaled(f2, width)
        self.joint = nn.Sequential(nn.Linear(joint_in, _scaled(512, width)), act(),
                                   nn.Linear(_scaled(512, width), 1))

    def forward(self, image: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Logit (N,) that ``image`` is a real image whose target feature map is ``feature``."""
        h = image * 2 - 1  # images arrive in [0, 1]
        for layer in self.image.values():
            h = layer(h)
        h = torch.flatten(self.pool(h), 1)
        g = self.feature(torch.flatten(feature, 1))
        return self.joint(torch.cat([h, g], dim=1)).squeeze(1)


@register("discriminator")
def alexnet_conv5(spectral_norm: bool = True, **kw) -> Discriminator:
    return Discriminator(spectral_norm=spectral_norm, **kw)


@register("discriminator")
def alexnet_small_conv5(spectral_norm: bool = True, **kw) -> Discriminator:
    """Quarter width for the 64 x 3 x 3 conv5 of ``alexnet_small`` (128 px images)."""
    kw = {"width": 0.25, "feature_dim": 64 * 3 * 3, **kw}
    return Discriminator(spectral_norm=spectral_norm, name="alexnet_small_conv5", **kw)
