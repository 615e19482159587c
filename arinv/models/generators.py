"""Feature-inverting generators, one layer-spec table per paper table, row for row.

Each row is ``(layer, type, kernel, stride, pad, in_size, out_size, in_ch, out_ch)`` exactly as
printed in the appendix (sizes at the nominal 224 px input; they are documentation that the
tests check with forward hooks, the network itself is fully convolutional). Types:

    conv   conv2d + BN + ReLU (no bias)       tconv  tconv2d + BN + ReLU (no bias)
    nn     nearest-neighbour upsampling x2    out    conv2d (bias) + tanh

The output is ``(tanh + 1) / 2``: images in [0, 1], the range every encoder takes.
Spectral normalisation wraps every conv / transposed conv (``spectral_norm=True``).
Scaled-down variants keep the rows and multiply the hidden widths by ``width``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from .registry import register

# Table A4: AlexNet conv5 (256 x 6 x 6) -> 3 x 224 x 224, transposed convolutions.
TABLE_A4 = [
    ("1a", "conv", 3, 1, 1, 6, 6, 256, 256),
    ("2a", "tconv", 4, 1, 1, 6, 7, 256, 256),
    ("2b", "conv", 3, 1, 1, 7, 7, 256, 256),
    ("3a", "tconv", 4, 2, 1, 7, 14, 256, 256),
    ("3b", "conv", 3, 1, 1, 14, 14, 256, 256),
    ("4a", "tconv", 4, 2, 1, 14, 28, 256, 256),
    ("4b", "conv", 3, 1, 1, 28, 28, 256, 128),
    ("5a", "tconv", 4, 2, 1, 28, 56, 128, 128),
    ("5b", "conv", 3, 1, 1, 56, 56, 128, 64),
    ("6a", "tconv", 4, 2, 1, 56, 112, 64, 64),
    ("6b", "conv", 3, 1, 1, 112, 112, 64, 32),
    ("7a", "tconv", 4, 2, 1, 112, 224, 32, 32),
    ("7b", "conv", 3, 1, 1, 224, 224, 32, 3),
    ("7c", "out", 3, 1, 1, 224, 224, 3, 3),
]

# Table A6: AlexNet conv1 (64 x 27 x 27) -> 3 x 224 x 224, nearest-neighbour upsampling.
TABLE_A6 = [
    ("1a", "conv", 3, 1, 1, 27, 27, 64, 64),
    ("2a", "tconv", 4, 1, 1, 27, 28, 64, 64),
    ("2b", "conv", 3, 1, 1, 28, 28, 64, 64),
    ("3a", "nn", None, 2, None, 28, 56, 64, 64),
    ("3b", "conv", 3, 1, 1, 56, 56, 64, 64),
    ("3c", "conv", 3, 1, 1, 56, 56, 64, 32),
    ("4a", "nn", None, 2, None, 56, 112, 32, 32),
    ("4b", "conv", 3, 1, 1, 112, 112, 32, 32),
    ("5a", "nn", None, 2, None, 112, 224, 32, 32),
    ("5b", "conv", 3, 1, 1, 224, 224, 32, 16),
    ("5c", "conv", 3, 1, 1, 224, 224, 16, 3),
    ("5d", "out", 3, 1, 1, 224, 224, 3, 3),
]

# Table A7: AlexNet conv2 (192 x 13 x 13) -> 3 x 224 x 224, nearest-neighbour upsampling.
TABLE_A7 = [
    ("1a", "conv", 3, 1, 1, 13, 13, 192, 192),
    ("2a", "tconv", 4, 1, 1, 13, 14, 192, 192),
    ("2b", "conv", 3, 1, 1, 14, 14, 192, 96),
    ("3a", "nn", None, 2, None, 14, 28, 96, 96),
    ("3b", "conv", 3, 1, 1, 28, 28, 96, 96),
    ("3c", "conv", 3, 1, 1, 28, 28, 96, 64),
    ("4a", "nn", None, 2, None, 28, 56, 64, 64),
    ("4b", "conv", 3, 1, 1, 56, 56, 64, 64),
    ("5a", "nn", None, 2, None, 56, 112, 64, 64),
    ("5b", "conv", 3, 1, 1, 112, 112, 64, 64),
    ("6a", "nn", None, 2, None, 112, 224, 64, 64),
    ("6b", "conv", 3, 1, 1, 224, 224, 64, 32),
    ("6c", "conv", 3, 1, 1, 224, 224, 32, 3),
    ("6d", "out", 3, 1, 1, 224, 224, 3, 3),
]

# Not in the paper (Sec. A2.3 gives no table): ResNet-18 layer4 (512 x 4 x 4) -> 3 x 32 x 32
# in Table A4's language: a size-preserving conv, then three (tconv x2, conv halving the
# channels) stages, then conv -> 3 channels and the conv + tanh output layer. The +1 tconv of
# Table A4 (6 -> 7) is dropped because 4 x 2^3 = 32 already.
TABLE_RESNET18_LAYER4 = [
    ("1a", "conv", 3, 1, 1, 4, 4, 512, 512),
    ("2a", "tconv", 4, 2, 1, 4, 8, 512, 512),
    ("2b", "conv", 3, 1, 1, 8, 8, 512, 256),
    ("3a", "tconv", 4, 2, 1, 8, 16, 256, 256),
    ("3b", "conv", 3, 1, 1, 16, 16, 256, 128),
    ("4a", "tconv", 4, 2, 1, 16, 32, 128, 128),
    ("4b", "conv", 3, 1, 1, 32, 32, 128, 64),
    ("4c", "conv", 3, 1, 1, 32, 32, 64, 3),
    ("4d", "out", 3, 1, 1, 32, 32, 3, 3),
]


def _scaled(ch: int, width: float) -> int:
    return ch if ch == 3 else max(4, round(ch * width))


class Generator(nn.Module):
    """A stack of rows from a table; ``layers[name]`` is the row's module (for hooks)."""

    def __init__(self, table, *, width: float = 1.0, in_channels: int | None = None,
                 spectral_norm: bool = True, gray: bool = False, name: str = "generator"):
        super().__init__()
        self.table, self.width, self.gray = table, width, gray
        self.arch = dict(name=name, width=width, in_channels=in_channels,
                         spectral_norm=spectral_norm)
        if gray:  # only when set, so the arch of every colour generator stays as it was
            self.arch["gray"] = True
        sn = _sn if spectral_norm else (lambda m: m)
        self.layers = nn.ModuleDict()
        for i, (row, kind, k, s, p, _, _, cin, cout) in enumerate(table):
            cin = in_channels if i == 0 and in_channels else _scaled(cin, width)
            cout = _scaled(cout, width)
            if kind == "nn":
                layer = nn.Upsample(scale_factor=s, mode="nearest")
            elif kind == "out":
                layer = nn.Sequential(sn(nn.Conv2d(cin, cout, k, s, p, bias=True)), nn.Tanh())
            else:
                conv = nn.Conv2d if kind == "conv" else nn.ConvTranspose2d
                layer = nn.Sequential(sn(conv(cin, cout, k, s, p, bias=False)),
                                      nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            self.layers[row] = layer
        self.in_channels = in_channels or table[0][7]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            f = layer(f)
        if self.gray:  # one grey image in three equal channels: the mean of the three
            f = f.mean(1, keepdim=True).expand_as(f)
        return (f + 1) / 2


def _make(table, name: str, default_width: float = 1.0, default_in: int | None = None):
    def ctor(width: float = default_width, in_channels: int | None = default_in,
             spectral_norm: bool = True, gray: bool = False) -> Generator:
        return Generator(table, width=width, in_channels=in_channels,
                         spectral_norm=spectral_norm, gray=gray, name=name)

    ctor.__name__ = name
    return register("generator", name)(ctor)


# name -> (encoder, tap) it inverts; the small variants pair with the small encoders.
GENERATOR_TAPS = {
    "alexnet_conv5": ("alexnet", "conv5"),
    "alexnet_conv1": ("alexnet", "conv1"),
    "alexnet_conv2": ("alexnet", "conv2"),
    "resnet18_cifar_layer4": ("resnet18_cifar", "layer4"),
    "alexnet_small_conv5": ("alexnet_small", "conv5"),
    "alexnet_small_conv1": ("alexnet_small", "conv1"),
    "alexnet_small_conv2": ("alexnet_small", "conv2"),
    "resnet18_cifar_small_layer4": ("resnet18_cifar_small", "layer4"),
}

alexnet_conv5 = _make(TABLE_A4, "alexnet_conv5")
alexnet_conv1 = _make(TABLE_A6, "alexnet_conv1")
alexnet_conv2 = _make(TABLE_A7, "alexnet_conv2")
resnet18_cifar_layer4 = _make(TABLE_RESNET18_LAYER4, "resnet18_cifar_layer4")
# Quarter width; the input channels match the quarter-width encoders' taps.
alexnet_small_conv5 = _make(TABLE_A4, "alexnet_small_conv5", 0.25, 64)
alexnet_small_conv1 = _make(TABLE_A6, "alexnet_small_conv1", 0.25, 16)
alexnet_small_conv2 = _make(TABLE_A7, "alexnet_small_conv2", 0.25, 48)
resnet18_cifar_small_layer4 = _make(TABLE_RESNET18_LAYER4, "resnet18_cifar_small_layer4", 0.25, 128)
