"""The bundled sample sets: small labelled natural-image sets built without any download.

Square crops are cut at random from the photographs that scikit-image and scikit-learn ship
inside their wheels; a crop's label is the photograph it came from. Training crops come from the
left 70% of each photograph and held-out crops from the right 30%, so no held-out pixel was
seen in training.

- ``sample``: 8 colour photographs (``PHOTOS``). Colour statistics alone tell them apart, and
  small L2 perturbations cannot move those: a standard network trained on them is already
  about as robust as an adversarially trained one (see docs/benchmarks.md).
- ``sample-gray``: 16 photographs and textures (``GRAY_PHOTOS``), every crop converted to
  luminance and standardised to the same mean (128 of 255) and contrast (standard deviation
  48), so neither colour nor grey level identifies a class: a network must read texture and
  shape, and a standard one learns the brittle features adversarial training removes, as on
  CIFAR-10 and ImageNet. Standardised rather than randomly jittered: with a random brightness
  per crop the encoders learn to discard brightness, and no generator can then recover it, so
  PSNR compares nothing (docs/benchmarks.md). The main job's task. Stored as RGB (three equal
  channels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "china", "flower")
GRAY_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
               "hubble_deep_field", "camera", "moon", "coins", "brick", "grass", "gravel",
               "text", "page", "cell", "retina")
SETS = {"sample": PHOTOS, "sample-gray": GRAY_PHOTOS}
TASKS = {"sample": "which of the 8 bundled colour photographs a crop comes from",  # reports
         "sample-gray": "which of the 16 bundled grayscale photographs and textures a crop "
                        "comes from (each crop standardised to one mean and contrast)"}
_TRAIN_FRACTION = 0.7  # of each photograph's width
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_GRAY_MEAN, _GRAY_STD, _GRAY_MIN_STD = 128.0, 48.0, 12.0  # of 255


@dataclass
class SampleSet:
    images: np.ndarray   # uint8, N x H x W x 3
    labels: np.ndarray   # int64, N
    classes: list[str]


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as uint8 H x W x 3 (never touches the network; a grayscale one
    has three equal channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        photo = np.asarray(load_sample_image(f"{name}.jpg"), dtype=np.uint8)
    else:
        import skimage.data

        photo = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
        photo = np.repeat(photo[..., None], 3, -1) if photo.ndim == 2 else photo[..., :3]
    photo.setflags(write=False)  # cached: shared by every caller
    return photo


def held_out_part(name: str) -> np.ndarray:
    """The part of bundled photograph ``name`` no training crop comes from (its right 30%)."""
    photo = load_photo(name)
    return photo[:, int(photo.shape[1] * _TRAIN_FRACTION):]


def sample_set(split: str = "train", *, per_class: int = 48, size: int = 160,
               seed: int = 0, name: str = "sample") -> SampleSet:
    """``per_class`` crops of ``size`` x ``size`` px from each photograph's ``split`` region of
    bundled set ``name`` ("sample" or "sample-gray")."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if name not in SETS:
        raise ValueError(f"unknown bundled set {name!r}; choose one of {', '.join(SETS)}")
    gray = name == "sample-gray"
    # the gray set draws from its own stream: the colour set's crops stay what they were
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, *([7] if gray else [])])
    images, labels = [], []
    for label, photo_name in enumerate(SETS[name]):
        photo = load_photo(photo_name)
        h, w = photo.shape[:2]
        cut = int(w * _TRAIN_FRACTION)
        x_lo, x_hi = (0, cut) if split == "train" else (cut, w)
        max_side = min(h, x_hi - x_lo, int(0.3 * min(h, w)))
        for _ in range(per_class):
            side = int(rng.integers(int(0.6 * max_side), max_side + 1))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(x_lo, x_hi - side + 1))
            crop = Image.fromarray(photo[top:top + side, left:left + side])
            crop = np.asarray(crop.resize((size, size), Image.BICUBIC))
            images.append(_standard_gray(crop) if gray else crop)
            labels.append(label)
    return SampleSet(np.stack(images), np.asarray(labels, dtype=np.int64), list(SETS[name]))


def _standard_gray(crop: np.ndarray) -> np.ndarray:
    """Luminance standardised to mean ``_GRAY_MEAN`` and standard deviation ``_GRAY_STD``
    (a near-flat crop is stretched at most ``_GRAY_STD / _GRAY_MIN_STD`` times), as three equal
    uint8 channels."""
    y = crop.astype(np.float32) @ _LUMA
    y = (y - y.mean()) * (_GRAY_STD / max(float(y.std()), _GRAY_MIN_STD)) + _GRAY_MEAN
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, -1)
