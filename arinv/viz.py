"""Image grids: rows of image batches side by side, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(rows: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Each row an N x 3 x H x W batch in [0, 1] (same N, H, W); returns uint8 H' x W' x 3."""
    n, _, h, w = rows[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, batch in enumerate(rows):
        imgs = (batch.detach().float().clamp(0, 1).cpu() * 255).round().byte()
        for i, img in enumerate(imgs.permute(0, 2, 3, 1).numpy()):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[y:y + h, x:x + w] = img
    return grid


def save_grid(path: str | Path, rows: list[torch.Tensor], pad: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(rows, pad)).save(path)
    return path
