"""Image sources that shards are written from: ImageFolder trees, CIFAR-10 python batches,
cats-vs-dogs folders and the bundled sample set.

``open_source`` lists a source without decoding it. Each candidate image becomes a small
picklable reference, and ``Source.load`` (a module-level function, so it pickles by name to
worker processes) turns one reference into ``(uint8 H x W x 3 RGB, label)`` or raises
``BadImage``. Files count as images by extension alone (torchvision's list plus .gif); other files
are ignored and counted. A file with an image extension that PIL cannot decode is a bad input,
found (and skipped) only when it is loaded.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .sample import SETS as SAMPLE_SETS

FORMATS = ("imagefolder", "cifar10", "catsdogs", "sample")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                              ".webp", ".gif"})
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


class SourceError(ValueError):
    """A source cannot be used; the message names the path and what to do."""


class BadImage(Exception):
    """One input cannot be decoded; it is skipped and recorded, the rest goes on."""

    def __init__(self, input: str, reason: str):
        super().__init__(input, reason)
        self.input, self.reason = input, reason

    def __str__(self) -> str:
        return f"{self.input}: {self.reason}"


@dataclass
class Source:
    format: str
    location: str                   # what was asked for: a path, or "sample:<split>"
    classes: list[str]
    refs: list                      # one cheap, picklable reference per candidate image
    load: Callable[[Any], tuple[np.ndarray, int]]
    skipped: list[dict] = field(default_factory=list)     # inputs rejected while listing
    ignored: dict[str, int] = field(default_factory=dict)  # non-image files, by extension
    split: str | None = None


def open_source(spec: str | os.PathLike, source_format: str | None = None,
                split: str | None = None) -> Source:
    """List ``spec``: a path, or a bundled set ("sample" or "sample-gray", see
    ``arinv.data.sample``) as NAME, NAME:<split> or NAME:<split>:<crops per class>.
    ``split`` is the CIFAR-10 or sample split, or for a folder source the subfolder to use
    (e.g. ImageNet's "train")."""
    spec = os.fspath(spec)
    fmt = source_format or detect_format(spec, split)
    if fmt not in FORMATS:
        raise SourceError(f"unknown source format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "sample":
        name, spec_split, per_class = (spec.split(":") + ["", ""])[:3]
        if per_class and not per_class.isdigit():
            raise SourceError(f"{spec!r}: write the sample source as sample:<split>:<crops per "
                              "class>, e.g. sample:train:96")
        return sample_source(split or spec_split or "train", int(per_class or 48),
                             name if name in SAMPLE_SETS else "sample")
    root = _directory(spec)
    if fmt == "cifar10":
        return cifar10_source(root, split or "train")
    root = _subfolder(root, split) if split else root
    source = imagefolder_source(root) if fmt == "imagefolder" else catsdogs_source(root)
    source.split = split
    return source


def detect_format(spec: str, split: str | None = None) -> str:
    if spec.split(":")[0] in SAMPLE_SETS:
        return "sample"
    root = _directory(spec)
    if _cifar_folder(root):
        return "cifar10"
    root = _subfolder(root, split) if split else root
    entries = _scandir(root)
    if any(e.is_file() and _is_image(e.name) and _catdog_label(e.name) is not None
           for e in entries):
        return "catsdogs"
    if any(e.is_dir() and not e.name.startswith(".") for e in entries):
        return "imagefolder"
    raise SourceError(f"{root}: cannot tell the source format (no class subfolders, no CIFAR-10 "
                      "batches.meta, no cat.*/dog.* images); name it with --source-format")


# --- ImageFolder and cats-vs-dogs ----------------------------------------------------------------

def imagefolder_source(root: Path) -> Source:
    """ROOT/<class>/**/<image>; labels index the sorted class folder names (as torchvision's
    ImageFolder, except that hidden folders are not classes)."""
    entries = _scandir(root)
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise SourceError(f"{root}: no class subfolders; an ImageFolder source is "
                          "ROOT/<class name>/<image files>")
    if set(classes) <= _SPLIT_NAMES:
        raise SourceError(f"{root}: holds split folders {classes}, not class folders; pass "
                          f"--split {classes[0]} (one split per shard set)")
    refs, skipped, ignored = [], [], Counter()
    for e in entries:
        if e.is_file():
            _sort_file(Path(e.path), None, refs, ignored, skipped, "not inside a class folder")
    for label, name in enumerate(classes):
        for path in _files(root / name):
            _sort_file(path, label, refs, ignored, skipped, "")
    return _checked(Source("imagefolder", str(root), classes, refs, load_image_file, skipped,
                           dict(ignored)))


def catsdogs_source(root: Path) -> Source:
    """A flat folder of cat.<n>.jpg / dog.<n>.jpg (Kaggle's Dogs vs. Cats); label 0 cat, 1 dog."""
    refs, skipped, ignored = [], [], Counter()
    for e in sorted(_scandir(root), key=lambda e: e.name):
        if e.is_file():
            label = _catdog_label(e.name)
            _sort_file(Path(e.path), label, refs, ignored, skipped,
                       "file name starts with neither cat. nor dog.")
    return _checked(Source("catsdogs", str(root), ["cat", "dog"], refs, load_image_file, skipped,
                           dict(ignored)))


def load_image_file(ref: tuple[str, int]) -> tuple[np.ndarray, int]:
    path, label = ref
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImage(path, f"unreadable ({e.strerror or e})") from None
    if not data:
        raise BadImage(path, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image), label
    except Exception as e:  # noqa: BLE001 - PIL raises many types on bad files; all mean "skip"
        raise BadImage(path, f"cannot decode ({type(e).__name__}: {e})") from None


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image as uint8 H x W x 3: alpha is composited over white, 16-bit scaled to 8."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode != "F":
            values = values / 257  # 16-bit range; PIL's own convert("RGB") clips at 255 instead
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"))


def _catdog_label(name: str) -> int | None:
    lower = name.lower()
    return 0 if lower.startswith("cat.") else 1 if lower.startswith("dog.") else None


def _sort_file(path: Path, label: int | None, refs: list, ignored: Counter, skipped: list,
               unlabelled: str) -> None:
    if not _is_image(path.name):
        ignored[path.suffix.lower() or "(none)"] += 1
    elif label is None:
        skipped.append({"input": str(path), "reason": unlabelled})
    else:
        refs.append((str(path), label))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _files(folder: Path) -> list[Path]:
    def fail(e: OSError):
        raise SourceError(f"cannot list {e.filename}: {e.strerror}; check its permissions")

    out = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath, f) for f in sorted(filenames))
    return out


# --- CIFAR-10 ------------------------------------------------------------------------------------

def cifar10_source(root: Path, split: str = "train") -> Source:
    """The official python version: cifar-10-batches-py/ (or its parent) from
    cifar-10-python.tar.gz; ``split`` "train" (data_batch_1..5) or "test" (test_batch)."""
    folder = _cifar_folder(root)
    if folder is None:
        raise SourceError(f"{root}: not a CIFAR-10 python folder (no batches.meta); extract "
                          "cifar-10-python.tar.gz and pass its cifar-10-batches-py folder")
    if split not in CIFAR_BATCHES:
        raise SourceError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    missing = [n for n in ["batches.meta", *CIFAR_BATCHES[split]] if not (folder / n).is_file()]
    if missing:
        raise SourceError(f"{folder}: missing {', '.join(missing)}; re-extract "
                          "cifar-10-python.tar.gz")
    meta = _unpickle(folder / "batches.meta")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    refs = []
    for name in CIFAR_BATCHES[split]:
        path = str(folder / name)
        refs += [(path, row) for row in range(len(_cifar_batch(path)[1]))]
    return _checked(Source("cifar10", str(folder), classes, refs, load_cifar_image, split=split))


def load_cifar_image(ref: tuple[str, int]) -> tuple[np.ndarray, int]:
    images, labels = _cifar_batch(ref[0])
    return images[ref[1]], int(labels[ref[1]])


@lru_cache(maxsize=1)  # a shard's rows come from one or two consecutive batch files
def _cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(Path(path))
    data, labels = np.asarray(batch.get(b"data")), np.asarray(batch.get(b"labels"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or \
            labels.shape != (len(data),):
        raise SourceError(f"{path}: not a CIFAR-10 batch (expected b'data' uint8 N x 3072 and "
                          f"N b'labels', got {data.dtype} {data.shape} and {labels.shape})")
    # rows are 1024 red, 1024 green, 1024 blue values, each plane row-major 32 x 32
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10 ships as pickles; allow only the globals its arrays need, so a hostile file
    cannot run code."""

    ALLOWED: ClassVar = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            out = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure means the same: a broken file
        raise SourceError(f"{path}: cannot read this CIFAR-10 file ({type(e).__name__}: {e}); "
                          "re-extract cifar-10-python.tar.gz") from None
    if not isinstance(out, dict):
        raise SourceError(f"{path}: not a CIFAR-10 batch (holds a {type(out).__name__})")
    return out


def _cifar_folder(root: Path) -> Path | None:
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "batches.meta").is_file():
            return folder
    return None


# --- the bundled sample set ----------------------------------------------------------------------

def sample_source(split: str = "train", per_class: int = 48, name: str = "sample") -> Source:
    """Bundled set ``name`` ("sample" or "sample-gray")."""
    if split not in ("train", "val"):
        raise SourceError(f"sample split must be 'train' or 'val', got {split!r}")
    if per_class < 1:
        raise SourceError(f"sample: crops per class must be >= 1, got {per_class}")
    s = _sample(split, per_class, name)
    return Source("sample", f"{name}:{split}:{per_class}", list(s.classes),
                  [(split, i, per_class, name) for i in range(len(s.labels))],
                  load_sample_image, split=split)


def load_sample_image(ref: tuple) -> tuple[np.ndarray, int]:
    s = _sample(ref[0], ref[2], *ref[3:])
    return s.images[ref[1]], int(s.labels[ref[1]])


@lru_cache(maxsize=4)
def _sample(split: str, per_class: int = 48, name: str = "sample"):
    from .sample import sample_set

    return sample_set(split, per_class=per_class, name=name)


# --- shared checks -------------------------------------------------------------------------------

def _directory(spec: str) -> Path:
    root = Path(spec).expanduser().absolute()
    if not root.exists():
        raise SourceError(f"{root}: no such file or directory; check the source path")
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory; a source is a folder of images, a CIFAR-10 "
                          "python folder, or 'sample'")
    return root


def _subfolder(root: Path, split: str) -> Path:
    if not (root / split).is_dir():
        raise SourceError(f"{root}: no {split}/ folder for split {split!r}; drop --split to use "
                          f"{root} itself")
    return root / split


def _scandir(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as it:
            return list(it)
    except OSError as e:
        raise SourceError(f"cannot list {root}: {e.strerror}; check its permissions") from None


def _checked(source: Source) -> Source:
    if not source.refs:
        raise SourceError(f"{source.location}: no images found for a {source.format} source "
                          f"({sum(source.ignored.values())} non-image files ignored, "
                          f"{len(source.skipped)} images skipped); image files end in "
                          f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    return source
