"""Crops for training and evaluation, output uint8: torchvision transforms on decoded CHW
tensors (the local loaders), and the same crops fused with JPEG decoding for shard samples
(``decode_crops``, which the Ray Data stream runs in its decode tasks)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .beton import JPEG, BetonError, decode
from .jpeg import JpegError, decode_jpeg

EVAL_CROP_RATIO = 224 / 256


# torchvision is imported where it is used: Ray's decode workers import this module and need
# only torch (torchvision's import costs them about a second each on a 2-core VM).
def train_transform(resolution: int, scale: tuple[float, float] = (0.08, 1.0)):
    """Random-resized-crop + horizontal flip, as in ImageNet training."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(resolution, scale=scale, antialias=True),
                       v2.RandomHorizontalFlip()])


def eval_transform(resolution: int, crop_ratio: float = EVAL_CROP_RATIO):
    """Resize the short side to resolution / crop_ratio, then centre-crop ``resolution``."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(round(resolution / crop_ratio), antialias=True),
                       v2.CenterCrop(resolution)])


def apply_per_sample(images: torch.Tensor, transform) -> torch.Tensor:
    """Apply a per-image transform to a uint8 N x C x H x W batch."""
    return torch.stack([transform(img) for img in images])


# --- shard samples: decode + crop in one pass -------------------------------------------------

def crop_box(w: int, h: int, rng: np.random.Generator, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, width, height) for a w x h image."""
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    side = min(h, w)  # fall back to the centre square, as torchvision does
    return (w - side) // 2, (h - side) // 2, side, side


def _decode_at_least(payload, mode, w, h, need_w, need_h) -> tuple[np.ndarray, int]:
    """Decode, letting libjpeg-turbo scale by 1/2, 1/4 or 1/8 in the DCT domain while the image
    stays at least ``need_w`` x ``need_h`` (as ffcv does): returns (RGB image, scale factor)."""
    if mode != JPEG:
        return decode(payload, mode, w, h), 1
    scale = next(s for s in (8, 4, 2, 1) if s == 1 or (w / s >= need_w and h / s >= need_h))
    try:
        return decode_jpeg(payload, scale), scale
    except JpegError as e:
        raise BetonError(f"JPEG payload: {e}") from None


def _resize(img: np.ndarray, w: int, h: int) -> torch.Tensor:
    """H x W x 3 uint8 (a view is fine) -> 3 x h x w uint8: bilinear with antialiasing, the
    filter torchvision's RandomResizedCrop uses (torch's uint8 path, measured faster than
    OpenCV's INTER_AREA at these sizes)."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True)[0]


def train_crop(payload, mode, w, h, resolution, rng, scale=(0.08, 1.0)) -> torch.Tensor:
    """Random-resized-crop + flip of one encoded sample: 3 x resolution x resolution uint8."""
    left, top, cw, ch = crop_box(w, h, rng, scale)
    img, s = _decode_at_least(payload, mode, w, h, w * resolution / cw, h * resolution / ch)
    out = _resize(img[top // s:(top + ch) // s, left // s:(left + cw) // s], resolution, resolution)
    return out.flip(-1) if rng.random() < 0.5 else out


def eval_crop(payload, mode, w, h, resolution, crop_ratio=EVAL_CROP_RATIO) -> torch.Tensor:
    """Short side resized to resolution / crop_ratio, centre crop: 3 x res x res uint8."""
    short = round(resolution / crop_ratio)
    nh, nw = ((short, max(short, round(w * short / h))) if h <= w
              else (max(short, round(h * short / w)), short))
    img, _ = _decode_at_least(payload, mode, w, h, nw, nh)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return _resize(img, nw, nh)[:, top:top + resolution, left:left + resolution]


def decode_crops(payloads, modes, widths, heights, *, split_transform: str, resolution: int,
                 crop_scale=(0.08, 1.0), rng: np.random.Generator | None = None,
                 bad: list | None = None) -> np.ndarray:
    """Encoded shard samples -> uint8 N x 3 x resolution x resolution: random-resized-crop +
    flip ("train") or resize + centre crop ("eval"). A sample that does not decode (corrupt
    data) raises ``BetonError``, unless ``bad`` is a list: then its image is left black and
    ``(position, reason)`` is appended to ``bad``."""
    rng = np.random.default_rng() if rng is None else rng
    out = torch.zeros((len(payloads), 3, resolution, resolution), dtype=torch.uint8)
    for i, (p, m, w, h) in enumerate(zip(payloads, modes, widths, heights)):
        m, w, h = int(m), int(w), int(h)
        try:
            out[i] = (train_crop(p, m, w, h, resolution, rng, crop_scale)
                      if split_transform == "train" else eval_crop(p, m, w, h, resolution))
        except BetonError as e:
            if bad is None:
                raise
            bad.append((i, str(e)))
    return out.numpy()
