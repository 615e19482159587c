"""The bundled sample set: a small labelled natural-image set built without any download.

Square crops are cut at random from the photographs that scikit-image and scikit-learn ship
inside their wheels; a crop's label is the photograph it came from. Training crops come from the
left 70% of each photograph and held-out crops from the right 30%, so no held-out pixel was
seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field", "china", "flower")
_TRAIN_FRACTION = 0.7  # of each photograph's width


@dataclass
class SampleSet:
    images: np.ndarray   # uint8, N x H x W x 3
    labels: np.ndarray   # int64, N
    classes: list[str]


@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as uint8 H x W x 3 (never touches the network)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        photo = np.asarray(load_sample_image(f"{name}.jpg"), dtype=np.uint8)
    else:
        import skimage.data

        photo = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)[..., :3]
    photo.setflags(write=False)  # cached: shared by every caller
    return photo


def held_out_part(name: str) -> np.ndarray:
    """The part of bundled photograph ``name`` no training crop comes from (its right 30%)."""
    photo = load_photo(name)
    return photo[:, int(photo.shape[1] * _TRAIN_FRACTION):]


def sample_set(split: str = "train", *, per_class: int = 48, size: int = 160,
               seed: int = 0) -> SampleSet:
    """``per_class`` crops of ``size`` x ``size`` px from each photograph's ``split`` region."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = load_photo(name)
        h, w = photo.shape[:2]
        cut = int(w * _TRAIN_FRACTION)
        x_lo, x_hi = (0, cut) if split == "train" else (cut, w)
        max_side = min(h, x_hi - x_lo, int(0.3 * min(h, w)))
        for _ in range(per_class):
            side = int(rng.integers(int(0.6 * max_side), max_side + 1))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(x_lo, x_hi - side + 1))
            crop = Image.fromarray(photo[top:top + side, left:left + side])
            images.append(np.asarray(crop.resize((size, size), Image.BICUBIC)))
            labels.append(label)
    return SampleSet(np.stack(images), np.asarray(labels, dtype=np.int64), list(PHOTOS))
