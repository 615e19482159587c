"""Universal style transfer with the whitening and colouring transform (Sec. A3.1, A4.2).

``wct`` moves content features onto a style's feature statistics: per image, the content
features (C x HW) are centred, whitened with their own covariance, coloured with the style's
covariance and shifted to the style's mean; ``alpha`` blends the result with the content
features (1: all style, 0: the content unchanged).

Numerics, the contract the tests check:

* means, covariances and their eigendecompositions are computed in float64 whatever the
  features' dtype; the result is cast back;
* regulariser: eigenvalues of a covariance below ``eps`` times its largest eigenvalue are
  treated as zero. Whitening drops those directions instead of amplifying them by 1/sqrt(~0)
  (conv5 and conv2 covariances are rank-deficient whenever a map has fewer positions than
  channels, e.g. 256 channels over a 13 x 13 conv5 map), and colouring adds nothing along the
  style's null directions. With a content covariance of full numerical rank the output has the
  style's mean and covariance exactly (up to float64 rounding); otherwise it has them on the
  content's support;
* content and style maps may differ in size: only the style's statistics are used.

``stylize`` is the paper's multi-level, coarse-to-fine scheme: for each level in turn (by
default conv5, conv2, conv1) it re-encodes the current image, matches the style's statistics
at that level and decodes with that level's generator (Tables A4, A7, A6).

Size rule: content images keep their size and aspect ratio. Each is reflection-padded at the
bottom and right to the next multiple of ``stride`` (32 for the AlexNet pairs, whose generators
return exactly ``32 k`` px for a ``32 k`` px input at every tap; a pair that does not is refused
with an error) and the output is cropped back. Style images are encoded unpadded at their own
size, which must give a map of at least 2 x 2 at every level (an error names the image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_LEVELS = ("conv5", "conv2", "conv1")
EPS = 1e-5

Stats = tuple[torch.Tensor, torch.Tensor]  # (C,) mean and C x C covariance, float64


def feature_stats(features: torch.Tensor) -> Stats:
    """Mean (C,) and unbiased covariance (C x C), float64, of one C x H x W feature map."""
    if features.dim() != 3:
        raise ValueError(f"feature_stats takes one C x H x W map, got {tuple(features.shape)}")
    f = features.reshape(features.shape[0], -1).double()
    n = f.shape[1]
    if n < 2:
        raise ValueError(f"a {tuple(features.shape[1:])} feature map has {n} position: its "
                         "covariance needs at least 2 (use a larger style image)")
    mean = f.mean(dim=1)
    f = f - mean[:, None]
    return mean, f @ f.T / (n - 1)


def wct(content_features: torch.Tensor, style_features, alpha: float = 1.0, *,
        eps: float = EPS) -> torch.Tensor:
    """Whitening and colouring transform of N x C x H x W ``content_features`` to the style's
    statistics. ``style_features``: an N x C x H' x W' tensor (or 1 x C x H' x W', shared by
    all), or a sequence of N maps C x H_i x W_i of any sizes (each content image its own
    style). Returns ``alpha * wct + (1 - alpha) * content``, the content's shape and dtype."""
    fc = content_features
    if fc.dim() != 4:
        raise ValueError(f"content_features: must be N x C x H x W, got {tuple(fc.shape)}")
    n, c = fc.shape[:2]
    styles = list(style_features) if not isinstance(style_features, torch.Tensor) \
        else list(style_features.unbind(0))
    if len(styles) == 1 and n > 1:
        styles = styles * n
    if len(styles) != n:
        raise ValueError(f"style_features: need 1 or {n} style maps, got {len(styles)}")
    if any(s.dim() != 3 or s.shape[0] != c for s in styles):
        raise ValueError(f"style_features: every map must be {c} x H x W, got "
                         f"{[tuple(s.shape) for s in styles]}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha: must be a number in [0, 1], got {alpha!r}")
    if alpha == 0:
        return fc.clone()
    stats = [feature_stats(s) for s in styles]
    s_mean = torch.stack([m for m, _ in stats])                     # N x C
    s_cov = torch.stack([v for _, v in stats])                      # N x C x C
    f = fc.reshape(n, c, -1).double()
    if f.shape[2] < 2:
        raise ValueError(f"content_features: a {tuple(fc.shape[2:])} map has too few positions "
                         "for a covariance (use a larger content image)")
    c_mean = f.mean(dim=2, keepdim=True)
    f = f - c_mean
    c_cov = f @ f.transpose(1, 2) / (f.shape[2] - 1)
    whiten = _matrix_power(c_cov, -0.5, eps)
    colour = _matrix_power(s_cov, 0.5, eps)
    out = colour @ (whiten @ f) + s_mean[:, :, None]
    out = out.reshape(fc.shape).to(fc.dtype)
    return out if alpha == 1 else alpha * out + (1 - alpha) * fc


def _matrix_power(cov: torch.Tensor, power: float, eps: float) -> torch.Tensor:
    """cov^power for batched symmetric PSD float64 matrices; eigenvalues <= eps * largest are
    taken as zero (and stay zero under a negative power)."""
    values, vectors = torch.linalg.eigh(cov)
    keep = values > eps * values.amax(dim=-1, keepdim=True).clamp_min(1e-300)
    scaled = torch.where(keep, values.clamp_min(1e-300).pow(power), torch.zeros_like(values))
    return (vectors * scaled[..., None, :]) @ vectors.transpose(-1, -2)


class Level(nn.Module):
    """One level of ``stylize``: the encoder's tap and the generator that inverts it."""

    def __init__(self, encoder: nn.Module, generator: nn.Module, layer: str):
        super().__init__()
        self.encoder, self.generator, self.layer = encoder, generator, layer

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x, self.layer)


@torch.no_grad()
def stylize(images: torch.Tensor, styles, autoencoders: Mapping[str, tuple], *,
            alpha: float | Mapping[str, float] = 1.0,
            levels: Sequence[str] = PAPER_LEVELS, stride: int = 32,
            eps: float = EPS) -> torch.Tensor:
    """Multi-level style transfer. ``images``: N x 3 x H x W in [0, 1] (one size per call);
    ``styles``: one 3 x H' x W' image per content image (a sequence, sizes free) or an
    N x 3 x H' x W' / 1 x 3 x H' x W' tensor; ``autoencoders``: level -> (encoder, generator)
    inverting that tap; ``alpha``: one blend for every level or one per level. Returns
    N x 3 x H x W in [0, 1] on ``images``' device."""
    _check_rgb(images, "images")
    if images.dim() != 4:
        raise ValueError(f"images: must be N x 3 x H x W, got {tuple(images.shape)}")
    style_list = list(styles.unbind(0)) if isinstance(styles, torch.Tensor) else list(styles)
    for i, s in enumerate(style_list):
        _check_rgb(s, f"styles[{i}]", dims=3)
    missing = [lv for lv in levels if lv not in autoencoders]
    if missing:
        raise ValueError(f"levels {missing} have no autoencoder; given: {sorted(autoencoders)}")
    alphas = {lv: float(alpha[lv] if isinstance(alpha, Mapping) else alpha) for lv in levels}
    stages = [Level(*autoencoders[lv], lv) for lv in levels]
    device = next(stages[0].generator.parameters()).device
    h, w = images.shape[-2:]
    size = (_round_up(h, stride), _round_up(w, stride))
    modes = [(m, m.training) for st in stages for m in st.modules()]
    try:
        for st in stages:
            st.eval()
        x = images.to(device, torch.float32)
        for st in stages:
            style_maps = [_encode_style(st, s.to(device, torch.float32), i)
                          for i, s in enumerate(style_list)]
            padded = F.pad(x, (0, size[1] - w, 0, size[0] - h), mode=_pad_mode(x, size))
            try:
                fc = st.encode(padded)
            except RuntimeError as e:  # a map shrunk to nothing on the way
                raise ValueError(f"images: {size} px (padded) is too small for {st.layer}; "
                                 f"content images need at least {_min_side(st)} px a side "
                                 f"({e})") from None
            y = st.generator(wct(fc, style_maps, alphas[st.layer], eps=eps))
            if tuple(y.shape[-2:]) != size:
                raise ValueError(f"{st.layer}: the generator returns {tuple(y.shape[-2:])} px "
                                 f"for a {size} input; stylize needs a pair that reproduces "
                                 "the padded size (pass the stride its encoder downsamples by)")
            x = y[..., :h, :w].float().clamp(0, 1)
    finally:
        for m, training in modes:
            m.training = training
    return x.to(images.device)


def _encode_style(st: Level, s: torch.Tensor, i: int) -> torch.Tensor:
    try:
        f = st.encode(s[None])[0]
    except RuntimeError:  # a map shrunk to nothing on the way
        f = None
    if f is None or f.shape[1] * f.shape[2] < 2:
        raise ValueError(f"styles[{i}]: a {tuple(s.shape[-2:])} px image is too small for "
                         f"{st.layer} (its statistics need a map of 2 positions or more: at "
                         f"least {_min_side(st)} px a side)")
    return f


def _check_rgb(x, name: str, dims: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name}: must be a float tensor in [0, 1], got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name}: must have {dims} dims (C x H x W), got {tuple(x.shape)}")
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name}: must be RGB (3 channels), got shape {tuple(x.shape)}"
                         + ("; a grayscale image: convert it to RGB first"
                            if x.dim() >= 3 and x.shape[-3] == 1 else ""))
    lo, hi = float(x.min()), float(x.max())
    if not (0 <= lo and hi <= 1):
        raise ValueError(f"{name}: values must lie in [0, 1], got [{lo}, {hi}]")


def _round_up(n: int, stride: int) -> int:
    return -(-n // stride) * stride


def _pad_mode(x: torch.Tensor, size: tuple[int, int]) -> str:
    # reflection needs the pad smaller than the image; tiny images fall back to replication
    return "reflect" if size[0] - x.shape[-2] < x.shape[-2] and \
        size[1] - x.shape[-1] < x.shape[-1] else "replicate"


def _min_side(st: Level) -> int:
    p = next(st.encoder.parameters())
    for side in range(8, 4096, 8):
        try:
            f = st.encode(torch.zeros(1, 3, side, side, device=p.device))
        except RuntimeError:
            continue
        if f.shape[-1] * f.shape[-2] >= 2:
            return side
    return 4096
