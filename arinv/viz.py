"""Image grids: rows of image batches side by side, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(rows: list[torch.Tensor], pad: int = 2,
               labels: list[str] | None = None) -> np.ndarray:
    """Each row an N x 3 x H x W batch in [0, 1] (same N, H, W); returns uint8 H' x W' x 3.
    ``labels``: one text per row, written in a margin left of it."""
    n, _, h, w = rows[0].shape
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"labels: one per row ({len(rows)}), got {len(labels)}")
    margin = _label_width(labels) if labels else 0
    grid = np.full((len(rows) * (h + pad) + pad, margin + n * (w + pad) + pad, 3), 255, np.uint8)
    for r, batch in enumerate(rows):
        imgs = (batch.detach().float().clamp(0, 1).cpu() * 255).round().byte()
        for i, img in enumerate(imgs.permute(0, 2, 3, 1).numpy()):
            y, x = pad + r * (h + pad), margin + pad + i * (w + pad)
            grid[y:y + h, x:x + w] = img
    if labels:
        from PIL import ImageDraw

        image = Image.fromarray(grid)
        draw = ImageDraw.Draw(image)
        for r, text in enumerate(labels):
            draw.text((pad + 2, pad + r * (h + pad) + h // 2 - 6), text, fill=(0, 0, 0))
        grid = np.asarray(image)
    return grid


def _label_width(labels: list[str]) -> int:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return max(int(draw.textlength(t)) for t in labels) + 10


def save_grid(path: str | Path, rows: list[torch.Tensor], pad: int = 2,
              labels: list[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(rows, pad, labels)).save(path)
    return path
