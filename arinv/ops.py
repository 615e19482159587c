"""Orthonormal 2-D Haar wavelet analysis and synthesis: the wavelet pooling and unpooling of
the denoising autoencoder (Sec. A4.3, Tables A8/A9).

For each 2 x 2 block ``[[a, b], [c, d]]`` of every channel (rows top to bottom):

    ll = (a + b + c + d) / 2     approximation (passed down the encoder)
    lh = (a + b - c - d) / 2     low along width, high along height (horizontal edges)
    hl = (a - b + c - d) / 2     high along width, low along height (vertical edges)
    hh = (a - b - c + d) / 2     diagonal

This is PyWavelets' ``pywt.dwt2(x, "haar")`` band for band and sign for sign:
``(cA, (cH, cV, cD)) == (ll, (lh, hl, hh))``. The transform is orthonormal, so
``haar_synthesis`` is its exact inverse (up to float rounding) and keeps energy.

Both take N x C x H x W (any leading dims) tensors; analysis needs even H and W (the
denoiser's rule for odd sizes lives with the denoiser, in ``arinv.models.denoiser``).
"""

from __future__ import annotations

import torch


def haar_analysis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` (..., H, W), H and W even -> ``(ll, lh, hl, hh)``, each (..., H/2, W/2)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"haar_analysis needs an even height and width, got {h} x {w}")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    top, bottom = a + b, c + d          # low along width
    left, right = a - b, c - d          # high along width
    return (top + bottom) / 2, (top - bottom) / 2, (left + right) / 2, (left - right) / 2


def haar_synthesis(ll: torch.Tensor, lh: torch.Tensor, hl: torch.Tensor,
                   hh: torch.Tensor) -> torch.Tensor:
    """The inverse of ``haar_analysis``: four (..., h, w) bands -> (..., 2h, 2w)."""
    shapes = {tuple(t.shape) for t in (ll, lh, hl, hh)}
    if len(shapes) != 1:
        raise ValueError(f"haar_synthesis needs four bands of one shape, got {sorted(shapes)}")
    a = (ll + lh + hl + hh) / 2
    b = (ll + lh - hl - hh) / 2
    c = (ll - lh + hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    top = torch.stack((a, b), dim=-1).flatten(-2)       # (..., h, 2w): a b a b ...
    bottom = torch.stack((c, d), dim=-1).flatten(-2)
    return torch.stack((top, bottom), dim=-2).flatten(-3, -2)  # rows: top, bottom, ...
