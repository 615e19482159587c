"""Crops for training and evaluation on uint8 CHW tensors (output stays uint8)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_transform(resolution: int, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """Random-resized-crop + horizontal flip, as in ImageNet training."""
    return v2.Compose([v2.RandomResizedCrop(resolution, scale=scale, antialias=True),
                       v2.RandomHorizontalFlip()])


def eval_transform(resolution: int, crop_ratio: float = 224 / 256) -> v2.Compose:
    """Resize the short side to resolution / crop_ratio, then centre-crop ``resolution``."""
    return v2.Compose([v2.Resize(round(resolution / crop_ratio), antialias=True),
                       v2.CenterCrop(resolution)])


def apply_per_sample(images: torch.Tensor, transform) -> torch.Tensor:
    """Apply a per-image transform to a uint8 N x C x H x W batch."""
    return torch.stack([transform(img) for img in images])
