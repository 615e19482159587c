"""The wavelet-pooling denoising autoencoder (Sec. A4.3, Tables A8 and A9), row for row.

Encoder (Table A8): AlexNet's five convolutions with each max-pooling replaced by Haar analysis
(``arinv.ops.haar_analysis``). The approximation band ``ll`` goes on down the encoder; the
three detail bands ``(lh, hl, hh)`` of pooling level k skip to the decoder's unpooling of level
k. Its convolutions are copied from a trained AlexNet encoder (standard or robust) and frozen;
its normalisation is that encoder's.

Decoder (Table A9): 3 x 3 conv + BN + ReLU blocks, Haar synthesis in place of each transposed
convolution (``arinv.ops.haar_synthesis``, the level's skipped details as its detail bands),
reflection padding, and two nearest-neighbour x2 upsamplings that undo conv1's stride of 4;
conv + tanh last, output ``(tanh + 1) / 2`` in [0, 1].

Rule for odd sizes (the tables' 55 -> 27, 27 -> 13, 13 -> 6 and 6 -> 12 -> 13, 13 -> 26 -> 27,
27 -> 55 -> 56):

* pooling an odd height or width drops the last row or column first (floor, like the max-pooling
  it replaces): 55 -> 27, 27 -> 13, 13 -> 6;
* after each unpooling the decoder reflection-pads at the bottom and right back to the size the
  encoder had before that pooling (12 -> 13, 26 -> 27, 54 -> 55; Table A9 prints the last as
  unpooling straight to 55);
* before the two x2 upsamplings it pads to ``ceil(H / 4)`` (55 -> 56 at 224 px: Table A9's 4b) and
  the output is cropped to the input's H x W (a no-op at 224 px).

So the model is fully convolutional: any input of at least 63 px a side comes back at its own
size. Rows are ``(layer, type, kernel, stride, pad, in_size, out_size, in_ch, out_ch)`` at 224 px
as printed (documentation the tests check with forward hooks). Types: ``conv`` (conv2d + ReLU,
bias; encoder), ``dconv`` (conv2d + BN + ReLU, no bias), ``pool`` / ``unpool`` (Haar analysis /
synthesis), ``pad`` (reflection padding), ``nn`` (nearest-neighbour x2), ``out`` (conv2d, bias,
+ tanh). Quarter-width variants (``width``) keep the rows and scale the channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from arinv.ops import haar_analysis, haar_synthesis

from .alexnet import AlexNet

TABLE_A8 = [
    ("1a", "conv", 11, 4, 2, 224, 55, 3, 64),
    ("2a", "pool", None, 2, None, 55, 27, 64, 64),
    ("2b", "conv", 5, 1, 2, 27, 27, 64, 192),
    ("3a", "pool", None, 2, None, 27, 13, 192, 192),
    ("3b", "conv", 3, 1, 1, 13, 13, 192, 384),
    ("3c", "conv", 3, 1, 1, 13, 13, 384, 256),
    ("3d", "conv", 3, 1, 1, 13, 13, 256, 256),  # printed "3c" twice in the appendix
    ("4a", "pool", None, 2, None, 13, 6, 256, 256),
]

TABLE_A9 = [
    ("1a", "dconv", 3, 1, 1, 6, 6, 256, 256),
    ("2a", "unpool", None, 2, None, 6, 12, 256, 256),
    ("2b", "dconv", 3, 1, 1, 12, 12, 256, 256),
    ("2c", "pad", None, None, None, 12, 13, 256, 256),
    ("2d", "dconv", 3, 1, 1, 13, 13, 256, 256),
    ("2e", "dconv", 3, 1, 1, 13, 13, 256, 192),
    ("3a", "unpool", None, 2, None, 13, 26, 192, 192),
    ("3b", "pad", None, None, None, 26, 27, 192, 192),
    ("3c", "dconv", 3, 1, 1, 27, 27, 192, 128),
    ("3d", "dconv", 3, 1, 1, 27, 27, 128, 64),
    ("4a", "unpool", None, 2, None, 27, 55, 64, 64),
    ("4b", "pad", None, None, None, 55, 56, 64, 64),
    ("4c", "dconv", 3, 1, 1, 56, 56, 64, 64),
    ("5a", "nn", None, 2, None, 56, 112, 64, 64),
    ("5b", "dconv", 3, 1, 1, 112, 112, 64, 32),
    ("5c", "dconv", 3, 1, 1, 112, 112, 32, 32),
    ("6a", "nn", None, 2, None, 112, 224, 32, 32),
    ("6b", "dconv", 3, 1, 1, 224, 224, 32, 3),
    ("6c", "dconv", 3, 1, 1, 224, 224, 3, 3),
    ("6d", "out", 3, 1, 1, 224, 224, 3, 3),
]

# Table A8's conv rows -> the AlexNet ``convs`` index whose weights they take.
_ALEXNET_CONV = {"1a": 0, "2b": 3, "3b": 6, "3c": 8, "3d": 10}


def _scaled(ch: int, width: float) -> int:
    return ch if ch == 3 else max(1, round(ch * width))


def wavelet_pool(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Haar analysis with the odd-size rule: ``(ll, (lh, hl, hh))``."""
    h, w = x.shape[-2:]
    ll, lh, hl, hh = haar_analysis(x[..., :h - h % 2, :w - w % 2])
    return ll, (lh, hl, hh)


def pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reflection-pad at the bottom and right to ``size`` (each side grows by at most 2)."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"cannot pad {tuple(x.shape[-2:])} to {size}")
    return F.pad(x, (0, dw, 0, dh), mode="reflect") if dh or dw else x


class WaveletEncoder(nn.Module):
    """Table A8. ``forward(x)`` -> ``(ll, skips)``; ``skips[k]`` = ``((lh, hl, hh), size)``
    of pooling level k+1, ``size`` the map's H x W before that pooling."""

    def __init__(self, width: float = 1.0, normalize: nn.Module | None = None):
        super().__init__()
        self.table, self.width = TABLE_A8, width
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.layers = nn.ModuleDict()
        for row, kind, k, s, p, _, _, cin, cout in TABLE_A8:
            if kind == "conv":
                self.layers[row] = nn.Sequential(
                    nn.Conv2d(_scaled(cin, width), _scaled(cout, width), k, s, p),
                    nn.ReLU(inplace=True))
            else:
                self.layers[row] = nn.Identity()  # a pooling row: a hook point, no weights

    @classmethod
    def from_alexnet(cls, encoder: AlexNet, *, freeze: bool = True) -> "WaveletEncoder":
        """Table A8 with ``encoder``'s convolution weights and normalisation (copied)."""
        if not isinstance(encoder, AlexNet):
            raise ValueError(f"the wavelet encoder copies an AlexNet's convolutions; got a "
                             f"{getattr(encoder, 'arch', {}).get('name', type(encoder).__name__)}")
        width = encoder.arch.get("width", 1.0)
        enc = cls(width=width, normalize=encoder.normalize)
        for row, i in _ALEXNET_CONV.items():
            enc.layers[row][0].load_state_dict(encoder.convs[i].state_dict())
        if freeze:
            enc.requires_grad_(False)
        return enc

    def forward(self, x: torch.Tensor):
        h = self.normalize(x)
        skips = []
        for row, kind, *_ in TABLE_A8:
            if kind == "pool":
                size = tuple(h.shape[-2:])
                h, details = wavelet_pool(h)
                skips.append((details, size))
            h = self.layers[row](h)
        return h, skips


class WaveletDecoder(nn.Module):
    """Table A9. ``forward(ll, skips, size)`` -> N x 3 x H x W in [0, 1], ``size`` = (H, W)."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.table, self.width = TABLE_A9, width
        self.layers = nn.ModuleDict()
        for row, kind, k, s, p, _, _, cin, cout in TABLE_A9:
            cin, cout = _scaled(cin, width), _scaled(cout, width)
            if kind == "dconv":
                layer = nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False),
                                      nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            elif kind == "out":
                layer = nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=True), nn.Tanh())
            elif kind == "nn":
                layer = nn.Upsample(scale_factor=2, mode="nearest")
            else:
                layer = nn.Identity()  # unpool / pad: done in forward, a hook point here
            self.layers[row] = layer

    def forward(self, ll: torch.Tensor, skips, size: tuple[int, int]) -> torch.Tensor:
        pending = list(skips)
        before_nn = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
        h, target = ll, None
        for row, kind, *_ in TABLE_A9:
            if kind == "unpool":
                details, target = pending.pop()
                h = haar_synthesis(h, *details)
            elif kind == "pad":
                # after an unpooling: back to the encoder's size; before the upsamplings: H/4
                h = pad_to(h, target if target is not None else before_nn)
                target = None
                if not pending and h.shape[-2:] != before_nn:
                    h = pad_to(h, before_nn)  # the last unpooling's 55 -> 56 (Table A9's 4b)
            h = self.layers[row](h)
        return ((h + 1) / 2)[..., :size[0], :size[1]]


class WaveletAutoencoder(nn.Module):
    """Frozen Table A8 encoder + trainable Table A9 decoder: ``forward(x)`` reconstructs ``x``
    (N x 3 x H x W in [0, 1], H, W >= 63) at its own size."""

    def __init__(self, encoder: WaveletEncoder, decoder: WaveletDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    @classmethod
    def from_alexnet(cls, encoder: AlexNet) -> "WaveletAutoencoder":
        enc = WaveletEncoder.from_alexnet(encoder)
        return cls(enc, WaveletDecoder(width=enc.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 63:
            raise ValueError(f"the wavelet autoencoder needs images of at least 63 px a side, "
                             f"got {tuple(x.shape[-2:])}")
        ll, skips = self.encoder(x)
        return self.decoder(ll, skips, tuple(x.shape[-2:]))
