"""Robustness to scale changes (Sec. A2.2, Table A2, Fig. A3): inverting upscaled images.

For a scale factor L, an evaluation image is resized to the encoder's resolution ``r``
(antialiased bilinear; a no-op for images already ``r`` px square) and upscaled by L with
bicubic interpolation to ``L*r`` px (clamped to [0, 1]): that is the target. The encoder's
convolutional trunk encodes the target at its full size, the fully convolutional generator
decodes the features, and the reconstruction is compared with the target (PSNR, SSIM and,
where its weights are present, LPIPS). Neither model ever saw an image larger than ``r``.

Size rule: strided layers floor, so at sizes other than the one it was trained at a generator
may return a few pixels more or fewer than it was given. Reconstruction and target are then
both cropped to their common centred region before comparing (``centre_crop``); with the
paper's AlexNet pairs the sizes agree at every L in 1..10.

Memory: the targets, their reconstructions, the generator's widest activation and the SSIM
maps all grow with L^2. ``scale_table`` therefore works through the images in chunks of at
most ``max_pixels`` target pixels (at least one image per chunk): at the default (2240^2, one
2240 px image) L = 10 runs one image at a time and L = 1 at 224 px 100 at once, so peak memory
is about the same at every L and does not grow with the number of images; only per-image
metrics and the figure's tiles (already shrunk to the tile size) are kept. The measured peak at
L = 10 is in docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from arinv.metrics.image import lpips, psnr, ssim

PAPER_FACTORS = tuple(range(1, 11))
DEFAULT_MAX_PIXELS = 2240 * 2240  # target pixels per forward pass (one L = 10 AlexNet image)


def upscaled(images: torch.Tensor, factor: int, resolution: int) -> torch.Tensor:
    """The Table A2 target: ``images`` (N x 3 x H x W in [0, 1]) resized to ``resolution`` px
    square, then upscaled ``factor`` times (bicubic), clamped to [0, 1]; float32."""
    _check_images(images)
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    x = images.float()
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                          align_corners=False, antialias=True).clamp(0, 1)
    if factor == 1:
        return x
    size = resolution * factor
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred ``size`` (H, W) region of ``x`` (N x C x H' x W', H' >= H, W' >= W)."""
    h, w = size
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {size}")
    return x[..., top:top + h, left:left + w]


def common_region(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` cropped to their common centred height and width."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return centre_crop(a, size), centre_crop(b, size)


def batches_by_pixels(n: int, pixels_per_image: int, max_pixels: int) -> list[slice]:
    """Consecutive slices of ``range(n)`` holding at most ``max_pixels`` image pixels each
    (at least one image)."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    per = max(1, max_pixels // max(1, pixels_per_image))
    return [slice(s, min(n, s + per)) for s in range(0, n, per)]


@torch.no_grad()
def reconstruct(encoder: nn.Module, generator: nn.Module, images: torch.Tensor, layer: str, *,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """``generator(encoder.features(x, layer))`` for ``images`` of any size (N x 3 x H x W in
    [0, 1], any device), computed on the generator's device in batches of at most
    ``max_pixels`` pixels; returned on ``images``' device, float32, clamped to [0, 1]. The
    output's size is the generator's (see the module's size rule)."""
    _check_images(images)
    device = next(generator.parameters()).device
    was = encoder.training, generator.training
    encoder.eval(), generator.eval()
    try:
        out = []
        for s in batches_by_pixels(images.shape[0], images.shape[-2] * images.shape[-1],
                                   max_pixels):
            x = images[s].to(device, torch.float32)
            y = generator(encoder.features(x, layer)).float().clamp(0, 1)
            if not torch.isfinite(y).all():
                raise FloatingPointError(f"the generator returned non-finite values for a "
                                         f"{tuple(x.shape[-2:])} input")
            out.append(y.to(images.device))
    finally:
        encoder.train(was[0]), generator.train(was[1])
    return torch.cat(out)


def compare(reconstruction: torch.Tensor, target: torch.Tensor, *,
            with_lpips: bool = False) -> dict[str, torch.Tensor]:
    """Per-image ``psnr``, ``ssim`` (and ``lpips``) of a reconstruction against its target,
    over their common centred region."""
    r, t = common_region(reconstruction.float(), target.float())
    out = {"psnr": psnr(r, t), "ssim": ssim(r, t)}
    if with_lpips:
        out["lpips"] = torch.cat([lpips(r[i:i + 1], t[i:i + 1]) for i in range(r.shape[0])])
    return out


Pair = tuple[nn.Module, nn.Module, str]  # (encoder, generator, tap)


def scale_table(pairs: Mapping[str, Pair], images: torch.Tensor, resolution: int, *,
                factors: Iterable[int] = PAPER_FACTORS, max_pixels: int = DEFAULT_MAX_PIXELS,
                with_lpips: bool = False, examples: int = 1, tile: int = 128,
                on_factor: Callable[[int, dict], None] | None = None) -> dict:
    """Table A2 for each autoencoder in ``pairs`` (column name -> (encoder, generator, tap)).

    For each L in ``factors``, chunk by chunk of at most ``max_pixels`` target pixels (so no
    more than one chunk of targets, reconstructions and metric maps is ever held): the targets
    ``upscaled(chunk, L, resolution)``, each pair's reconstructions and their per-image
    metrics. Returns ``{"factors": [...], "metrics": {column: {L: {metric: per-image
    tensor}}}, "examples": {L: {"target": t, column: recon}}}``, the examples being the first
    ``examples`` images already resized to ``tile`` px (see ``figure``). ``on_factor(L,
    means)`` is called after each L with ``{column: {metric: mean}}`` (progress, logging)."""
    factors = list(factors)
    if not factors or any(not isinstance(f, int) or f < 1 for f in factors):
        raise ValueError(f"factors must be integers >= 1, got {factors}")
    if not pairs:
        raise ValueError("pairs: give at least one autoencoder")
    _check_images(images)
    metrics: dict[str, dict[int, dict[str, torch.Tensor]]] = {c: {} for c in pairs}
    shown: dict[int, dict[str, torch.Tensor]] = {}
    for L in factors:
        parts: dict[str, list[dict[str, torch.Tensor]]] = {c: [] for c in pairs}
        shown[L] = {}
        side = L * resolution
        for s in batches_by_pixels(images.shape[0], side * side, max_pixels):
            target = upscaled(images[s], L, resolution)
            keep = max(0, min(examples - s.start, target.shape[0]))
            if keep:
                _add_tiles(shown[L], "target", target[:keep], target, tile)
            for column, (encoder, generator, layer) in pairs.items():
                recon = reconstruct(encoder, generator, target, layer, max_pixels=max_pixels)
                parts[column].append(compare(recon, target, with_lpips=with_lpips))
                if keep:
                    _add_tiles(shown[L], column, recon[:keep], target, tile)
                del recon
            del target
        for column in pairs:
            metrics[column][L] = {k: torch.cat([p[k] for p in parts[column]])
                                  for k in parts[column][0]}
        if on_factor is not None:
            on_factor(L, {c: {k: float(v.mean()) for k, v in metrics[c][L].items()}
                          for c in pairs})
    return {"factors": factors, "metrics": metrics, "examples": shown}


def _add_tiles(shown: dict, key: str, images: torch.Tensor, target: torch.Tensor,
               tile: int) -> None:
    """Append ``images`` (cropped to the common region with their targets) resized to ``tile``
    px to ``shown[key]``."""
    x = common_region(images, target[:images.shape[0]])[0].float()
    x = F.interpolate(x, size=(tile, tile), mode="bilinear", align_corners=False,
                      antialias=True).clamp(0, 1).cpu()
    shown[key] = torch.cat([shown[key], x]) if key in shown else x


def figure(examples: Mapping[int, Mapping[str, torch.Tensor]],
           columns: Sequence[str]) -> list[torch.Tensor]:
    """The Fig. A3 layout as a list of image rows for ``arinv.viz.save_grid``: for each example
    image, a row of upscaled inputs (one per L, left to right) and then one row per autoencoder
    column. The tiles are ``scale_table``'s examples, each already resized to one size, so an
    L = 10 tile shows the whole 10x image at the size of the L = 1 one."""
    factors = list(examples)
    n = examples[factors[0]]["target"].shape[0]
    return [torch.cat([examples[L][key][i:i + 1] for L in factors])
            for i in range(n) for key in ("target", *columns)]


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be an N x 3 x H x W tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if images.shape[0] == 0:
        raise ValueError("images: no images given")
    if images.dtype == torch.uint8:
        raise ValueError("images must be float in [0, 1], got uint8 (divide by 255)")
