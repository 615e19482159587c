"""Image files in and out for the commands that take users' own photographs (``arinv stylize``,
``arinv denoise``): a file or a folder of them, read as float RGB tensors with every bad file
named, written back as PNG."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def image_files(path: str, what: str) -> list[Path]:
    from arinv.data.sources import SourceError

    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise SourceError(f"{what} {path}: no such file or folder")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceError(f"{what} {path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_rgb(path: Path, *, gray_to_rgb: bool = False):
    """A float 3 x H x W tensor in [0, 1]; unreadable or (unless allowed) grayscale files are
    refused naming the file."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from arinv.data.sources import SourceError, to_rgb

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            im.load()
            if im.mode in ("1", "L", "LA", "I", "I;16", "F") and not gray_to_rgb:
                raise SourceError(f"{path}: a grayscale image (mode {im.mode}); give a colour "
                                  "image, or pass --gray-to-rgb to use it as RGB")
            rgb = to_rgb(im)
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types on bad files
        raise SourceError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 255


def write_png(image, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)


def labelled_grid(shown: list, labels: list[str], path: Path, *, tile: int = 128) -> Path:
    """A PNG with one labelled row per entry of ``labels`` and one column per entry of
    ``shown`` (each a list of 3 x H x W images, one per row, any sizes): each tile is the
    image's centred square, resized to ``tile`` x ``tile`` (the full images are the outputs
    themselves)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from arinv.viz import image_grid

    def square(x):
        h, w = x.shape[1:]
        s = min(h, w)
        return x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]

    rows = [torch.cat([F.interpolate(square(column[j])[None], size=(tile, tile),
                                     mode="bilinear", align_corners=False, antialias=True)
                       for column in shown]).clamp(0, 1) for j in range(len(labels))]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(rows, labels=labels)).save(path)
    return path
