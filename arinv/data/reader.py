"""A shard set read in one process, with numpy and the .beton reader alone (no Ray): the data
path of ``--local`` runs and evaluations, and the shard plumbing the Ray Data stream shares.

``ShardBatches`` yields ``(uint8 N x 3 x R x R, int64 N)`` torch batches decoded with the same crops as
the Ray Data stream (``arinv.data.transforms.decode_crops``), in an order and with crops drawn
from (seed, epoch), so a run is reproducible and a resumed run sees what the original would.
Shards on S3 enter a node-local, size-bounded, sha256-verified cache first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from . import storage
from .beton import BetonError, BetonReader
from .sample import SETS
from .shards import MANIFEST, ShardError, read_manifest, write_shards

DEFAULT_CACHE = os.environ.get("ARINV_CACHE_DIR", "/tmp/arinv-shard-cache")
DEFAULT_CACHE_BYTES = int(float(os.environ.get("ARINV_CACHE_BYTES", 50e9)))
ON_CORRUPT = ("skip", "fail")

_log = logging.getLogger("arinv.data")


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def has_manifest(uri: str) -> bool:
    """True when ``uri`` (a folder or ``s3://`` prefix) holds a shard set's manifest."""
    path = join(uri, MANIFEST)
    return storage.exists(path) if storage.is_s3(path) else Path(path).is_file()


def load_manifest(uri: str) -> dict:
    """The manifest of the shard set at ``uri`` (a folder or ``s3://`` prefix)."""
    if storage.is_s3(uri):
        storage.check_access(uri)
        try:
            return json.loads(storage.read_bytes(join(uri, MANIFEST)))
        except storage.StorageError as e:
            raise ShardError(f"{uri}: no readable {MANIFEST} ({e}); a shard set is complete only "
                             "once its manifest is published") from None
    return read_manifest(uri)


def open_shard(uri: str, shard: dict,
               cache: tuple[str, int] = (DEFAULT_CACHE, DEFAULT_CACHE_BYTES)) -> BetonReader:
    """A reader for one shard of the set at ``uri``: S3 shards enter the node-local cache
    sha256-verified; local ones get a cheap size check."""
    path = join(uri, shard["file"])
    if storage.is_s3(path):
        local = storage.LocalCache(cache[0], cache[1]).fetch(path, sha256=shard["sha256"],
                                                             size=shard["bytes"])
    else:
        local = Path(path)
        actual = local.stat().st_size if local.exists() else None
        if actual != shard["bytes"]:
            raise ShardError(f"{local}: {actual} bytes on disk, the manifest says {shard['bytes']} "
                             "(truncated or replaced); rewrite the shard set with 'arinv data write'")
        verify_local(local, shard["sha256"], cache[0])
    return BetonReader.from_path(local)


def verify_local(path: Path, sha256: str, cache_dir: str) -> None:
    """Check a local shard's sha256 against its manifest, once per version of the file on this
    node: the result is remembered under ``cache_dir`` by (path, size, mtime), so a shard
    altered in place (even at the same size) is hashed again and refused before it is read."""
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{sha256}"
    mark = (Path(cache_dir) / "verified"
            / hashlib.sha1(str(path.resolve()).encode()).hexdigest())
    try:
        if mark.read_text() == stamp:
            return
    except OSError:
        pass
    if storage.sha256_file(path) != sha256:
        raise ShardError(f"{path}: sha256 differs from the manifest (altered or corrupt); "
                         "rewrite the shard set with 'arinv data write'")
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        tmp = mark.with_name(f"{mark.name}.{os.getpid()}")
        tmp.write_text(stamp)
        os.replace(tmp, mark)
    except OSError:  # a read-only cache only costs a hash per open
        pass


def decode_rows(payloads, modes, widths, heights, where, *, on_corrupt: str = "skip",
                **crops) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, ok mask) of encoded shard samples (``decode_crops``'s ``crops``).
    ``where(i)`` names row i (shard file and index) in messages. A sample that does not decode
    is skipped with a logged warning (``ok`` False, its image black) or, with
    ``on_corrupt="fail"``, raises ``ShardError``."""
    from .transforms import decode_crops

    bad: list = []
    try:
        images = decode_crops(payloads, modes, widths, heights, bad=bad, **crops)
    except BetonError as e:  # not a sample: the call itself
        raise ShardError(str(e)) from None
    ok = np.ones(len(images), bool)
    for i, reason in bad:
        if on_corrupt == "fail":
            raise ShardError(f"{where(i)}: {reason}; the shard's checksum matched its manifest, "
                             "so the writer stored it: rewrite the shard set with 'arinv data "
                             "write' (or set data.on_corrupt=skip to train without it)")
        _log.warning("%s: %s; skipped (counted in the run's corrupt_samples metric)",
                     where(i), reason)
        ok[i] = False
    return images, ok


class ShardBatches:
    """Batches over the shard set at ``uri``: random-resized-crop + flip (``train``) or resize
    + centre crop, shuffled per epoch when ``shuffle`` (default: ``train``); the last batch
    may be short (every sample once per epoch). ``classes``: only samples with these labels."""

    def __init__(self, uri: str, batch_size: int, *, resolution: int, train: bool,
                 crop_scale: tuple[float, float] = (0.08, 1.0), seed: int = 0,
                 shuffle: bool | None = None, on_corrupt: str = "skip",
                 classes: list[int] | None = None):
        self.uri, self.batch_size, self.resolution = uri, batch_size, resolution
        self.train, self.crop_scale, self.seed = train, tuple(crop_scale), seed
        self.shuffle = train if shuffle is None else shuffle
        self.on_corrupt, self.skipped = on_corrupt, 0  # samples that did not decode, so far
        self.manifest = load_manifest(uri)
        self.classes = self.manifest["classes"]
        self.sizes = [s["num_samples"] for s in self.manifest["shards"]]
        self.keep = classes  # labels to yield (None: all)
        self._selected: np.ndarray | None = None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def selected(self) -> np.ndarray:
        """Indices (into the whole set) of the samples this reader yields: those whose label is
        in ``classes``, read from the shards' metadata once."""
        if self._selected is None:
            n = sum(self.sizes)
            if self.keep is None:
                self._selected = np.arange(n)
            else:
                self._selected = np.flatnonzero(np.isin(self.labels(), self.keep))
        return self._selected

    def labels(self) -> np.ndarray:
        """Every sample's label, in set order, from the shards' metadata (no image read)."""
        out = []
        for s in self.manifest["shards"]:
            with open_shard(self.uri, s) as r:
                out.append(np.asarray(r.labels))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return -(-len(self.selected()) // self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        import torch  # imported where used: Ray's read tasks import this module, not torch

        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = self.selected()
        n = len(chosen)
        order = chosen[rng.permutation(n)] if self.shuffle else chosen
        starts = np.cumsum([0] + self.sizes)
        readers = [open_shard(self.uri, s) for s in self.manifest["shards"]]
        try:
            for i in range(0, n, self.batch_size):
                idx = order[i:i + self.batch_size]
                shard = np.searchsorted(starts, idx, side="right") - 1
                local = [int(j - starts[k]) for k, j in zip(shard, idx)]
                recs = [readers[k].record(j) for k, j in zip(shard, local)]
                where = lambda i: (f"{join(self.uri, self.manifest['shards'][shard[i]]['file'])}"  # noqa: E731
                                   f" sample {local[i]}")
                images, ok = decode_rows(
                    [r.payload for r in recs], [r.mode for r in recs], [r.width for r in recs],
                    [r.height for r in recs], where, on_corrupt=self.on_corrupt,
                    split_transform="train" if self.train else "eval",
                    resolution=self.resolution, crop_scale=self.crop_scale, rng=rng)
                labels = torch.tensor([r.label for r in recs], dtype=torch.int64)
                self.skipped += int((~ok).sum())
                if ok.all():
                    yield torch.from_numpy(images), labels
                elif ok.any():
                    keep = torch.from_numpy(ok)
                    yield torch.from_numpy(images)[keep], labels[keep]
        finally:
            for r in readers:
                r.close()


def run_shards(data, workdir: str | os.PathLike, *, progress: bool = True) -> str:
    """The shard-set prefix (holding ``train/`` and ``val/``) a run with data config ``data``
    reads: ``data.shards``, or ``data.source`` written as shards under ``workdir/shards`` once
    (the bundled sample set, or an ImageFolder root's ``train/`` and ``val/``)."""
    if data.shards:
        return data.shards.rstrip("/")
    root = Path(workdir).expanduser().resolve() / "shards"
    if data.source in SETS:
        return str(write_sample_shards(root / f"{data.source}-{data.train_per_class}-"
                                       f"{data.val_per_class}", data.train_per_class,
                                       data.val_per_class, progress=progress, name=data.source))
    src = Path(data.source).expanduser().resolve()
    dest = root / f"{src.name}-{hashlib.sha1(str(src).encode()).hexdigest()[:8]}"
    for split in ("train", "val"):
        if not (dest / split / MANIFEST).is_file():
            write_shards(src / split, dest / split, overwrite=True, progress=progress,
                         executor="process")
    return str(dest)


def write_sample_shards(dest: str | os.PathLike, train_per_class: int, val_per_class: int, *,
                        progress: bool = True, name: str = "sample") -> Path:
    """Bundled set ``name`` as ``dest/train`` and ``dest/val`` shard sets (kept if present)."""
    dest = Path(dest)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        if not (dest / split / MANIFEST).is_file():
            write_shards(f"{name}:{split}:{per_class}", dest / split, samples_per_shard=256,
                         max_resolution=500, jpeg_quality=95, compress_probability=1.0,
                         overwrite=True, progress=progress, executor="process")
    return dest


def image_folder_shards(folder: str, workdir: str | os.PathLike, *, progress: bool = True):
    """An image folder as a shard set under ``workdir`` (written once per folder), and the
    image path of each sample index. ``FOLDER/<class>/<images>`` gives labels; a flat folder
    of images is one class. An image that cannot be decoded is refused, naming it."""
    from .sources import SourceError, open_source

    src = Path(folder).expanduser().resolve()
    if not src.is_dir():
        raise SourceError(f"{folder}: not a folder of images or a shard set (no manifest.json)")
    root, workdir = src, Path(workdir)
    if not any(e.is_dir() and not e.name.startswith(".") for e in src.iterdir()):
        # a flat folder: one class, named after the folder
        root = workdir / "folders" / hashlib.sha1(str(src).encode()).hexdigest()[:12]
        root.mkdir(parents=True, exist_ok=True)
        link = root / src.name
        if not link.exists():
            link.symlink_to(src, target_is_directory=True)
    dest = workdir / "shards" / hashlib.sha1(str(src).encode()).hexdigest()[:12]
    if not (dest / MANIFEST).is_file():
        write_shards(root, dest, source_format="imagefolder", shuffle_seed=None, overwrite=True,
                     progress=progress, executor="process")
    manifest = read_manifest(dest)
    if manifest["skipped"]:
        bad = manifest["skipped"][0]
        raise SourceError(f"{bad.get('input')}: {bad.get('reason')} ({len(manifest['skipped'])} "
                          f"unreadable image(s) in {folder}); remove or replace them and rerun")
    paths = [str(ref[0]) for ref in open_source(root, "imagefolder").refs]
    return str(dest), paths
