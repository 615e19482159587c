"""Source images -> numbered .beton shards and a manifest, in a local folder.

Shards are written in parallel worker processes, each under a hidden temporary name; when every
shard is done they are renamed ``shard-00000.beton``, ``shard-00001.beton``, ... and
``manifest.json`` is written last, so a folder without a manifest is never a complete shard set.
Publishing to object storage is a separate step that must keep that order: upload the shards,
then the manifest.

Each worker decodes its shard's images (skipping and recording bad ones), shrinks them to
``max_resolution`` and keeps them in memory while ffcv writes the shard, so a worker holds at most
``samples_per_shard x max_resolution^2 x 3`` bytes (about 0.8 GB at 1024 x 500 px).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .beton import MAX_RESOLUTION_LIMIT, BetonError, BetonReader, page_size_for, write_beton
from .sources import BadImage, Source, SourceError, open_source

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SHARD_NAME = "shard-{:05d}.beton"
SHARD_GLOB = "shard-*.beton"
DEFAULT_SAMPLES_PER_SHARD = 1024


class ShardError(ValueError):
    """A shard set cannot be written or fails verification; the message names the path and what
    to do."""


@dataclass
class _Task:
    index: int
    path: str  # temporary name; renamed once every shard is written
    refs: list
    load: Callable[[Any], tuple[np.ndarray, int]]
    settings: dict


def write_shards(source: str | os.PathLike, dest: str | os.PathLike, *,
                 source_format: str | None = None, split: str | None = None,
                 samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, max_resolution: int = 500,
                 jpeg_quality: int = 90, compress_probability: float = 0.5,
                 workers: int | None = None, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Write ``source`` (see ``arinv.data.sources.open_source``) as shards in the local folder
    ``dest`` and return the manifest. Everything that can be checked without decoding images
    (settings, destination, source listing) is checked before anything is written."""
    settings = {"max_resolution": max_resolution, "jpeg_quality": jpeg_quality,
                "compress_probability": compress_probability}
    workers = min(4, _cpu_count()) if workers is None else workers
    _check_settings(samples_per_shard, workers, **settings)
    dest = Path(dest).expanduser()
    _check_dest(dest, overwrite)
    src = open_source(source, source_format, split)
    if dest.is_dir():
        _remove_shard_set(dest)  # only leftovers of an interrupted run, unless overwrite
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    n = samples_per_shard
    tasks = [_Task(i, str(dest / f".{SHARD_NAME.format(i)}.tmp"), src.refs[start:start + n],
                   src.load, settings) for i, start in enumerate(range(0, len(src.refs), n))]
    try:
        results = _run(tasks, workers, progress)
        manifest = _manifest(src, samples_per_shard, settings, results)
        _publish(dest, tasks, results)
        _write_json_atomically(dest / MANIFEST, manifest)
    except BaseException:
        for task in tasks:
            Path(task.path).unlink(missing_ok=True)
        if created and not any(dest.iterdir()):
            dest.rmdir()
        raise
    return manifest


def read_manifest(dest: str | os.PathLike) -> dict:
    path = Path(dest).expanduser() / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path.parent}: no {MANIFEST}, so not a complete shard set (writing "
                         "may have been interrupted); write it with 'arinv data write'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable ({e}); rewrite the shard set") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise ShardError(f"{path}: not a version-{MANIFEST_VERSION} arinv shard manifest")
    return manifest


def verify_shards(dest: str | os.PathLike) -> dict:
    """Check every shard against the manifest (size, sha256, sample count); return the manifest."""
    dest = Path(dest).expanduser()
    manifest = read_manifest(dest)
    fix = f"rewrite the set with 'arinv data write SOURCE {dest} --overwrite'"
    for shard in manifest["shards"]:
        path = dest / shard["file"]
        if not path.is_file():
            raise ShardError(f"{path}: missing; {fix}")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise ShardError(f"{path}: {size} bytes but the manifest says {shard['bytes']} "
                             f"(truncated or altered); {fix}")
        if _sha256(path) != shard["sha256"]:
            raise ShardError(f"{path}: sha256 differs from the manifest (altered or corrupt); {fix}")
        try:
            with BetonReader.from_path(path) as reader:
                count = reader.num_samples
        except BetonError as e:
            raise ShardError(f"{e}; {fix}") from None
        if count != shard["num_samples"]:
            raise ShardError(f"{path}: holds {count} samples but the manifest says "
                             f"{shard['num_samples']}; {fix}")
    return manifest


# --- writing -------------------------------------------------------------------------------------

def _run(tasks: list[_Task], workers: int, progress: bool) -> list[dict]:
    import ffcv.writer  # noqa: F401 - imported once here (seconds), not in every forked worker
    from tqdm import tqdm

    results: list[dict] = [{}] * len(tasks)
    total = sum(len(t.refs) for t in tasks)
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool, \
            tqdm(total=total, unit="img", desc="writing shards", disable=not progress) as bar:
        futures = {pool.submit(_write_shard, task): i for i, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                bar.update(len(tasks[i].refs))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return results


def _write_shard(task: _Task) -> dict:
    """Runs in a worker process: decode, shrink, write one shard; report what was skipped."""
    from ffcv.fields.rgb_image import resizer

    # ffcv picks JPEG vs raw with numpy's global RNG (inherited by its writer process): seeding
    # it per shard makes rewriting the same source give byte-identical shards.
    np.random.seed(task.index)
    items, skipped = [], []
    for ref in task.refs:
        try:
            image, label = task.load(ref)
        except BadImage as e:
            skipped.append({"input": e.input, "reason": e.reason})
            continue
        items.append((resizer(image, task.settings["max_resolution"]), label))
    if not items:
        return {"num_samples": 0, "skipped": skipped}
    write_beton(task.path, items, **task.settings)
    return {"num_samples": len(items), "skipped": skipped, "bytes": os.path.getsize(task.path),
            "sha256": _sha256(task.path, sync=True)}


def _publish(dest: Path, tasks: list[_Task], results: list[dict]) -> None:
    """Rename the temporary shards to consecutive numbers (a shard of only bad images has no file)."""
    written = [t for t, r in zip(tasks, results) if r["num_samples"]]
    for number, task in enumerate(written):
        os.replace(task.path, dest / SHARD_NAME.format(number))


def _manifest(src: Source, samples_per_shard: int, settings: dict, results: list[dict]) -> dict:
    from importlib.metadata import version

    skipped = src.skipped + [s for r in results for s in r["skipped"]]
    written = [r for r in results if r["num_samples"]]
    if not written:
        raise SourceError(f"{src.location}: none of its {len(src.refs)} images could be decoded "
                          f"(first: {skipped[0]['input']}: {skipped[0]['reason']}); nothing "
                          "was written")
    shards = [{"file": SHARD_NAME.format(i), "num_samples": r["num_samples"],
               "bytes": r["bytes"], "sha256": r["sha256"]} for i, r in enumerate(written)]
    return {
        "format": "arinv-beton-shards", "version": MANIFEST_VERSION,
        "source": {"format": src.format, "location": src.location, "split": src.split},
        "classes": src.classes,
        "fields": {"image": "RGBImageField", "label": "IntField"},
        "num_samples": sum(s["num_samples"] for s in shards),
        "writer": {**settings, "samples_per_shard": samples_per_shard,
                   "page_size": page_size_for(settings["max_resolution"]),
                   "ffcv": version("ffcv")},
        "shards": shards,
        "skipped": skipped,
        "ignored": {"non_image_files": sum(src.ignored.values()),
                    "by_extension": dict(sorted(src.ignored.items()))},
    }


# --- checks and file helpers ---------------------------------------------------------------------

def _check_settings(samples_per_shard: int, workers: int, *, max_resolution: int,
                    jpeg_quality: int, compress_probability: float) -> None:
    problems = [
        (samples_per_shard >= 1, f"samples_per_shard must be >= 1, got {samples_per_shard}"),
        (workers >= 1, f"workers must be >= 1, got {workers}"),
        (1 <= max_resolution <= MAX_RESOLUTION_LIMIT,
         f"max_resolution must be in 1..{MAX_RESOLUTION_LIMIT}, got {max_resolution}"),
        (1 <= jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {jpeg_quality}"),
        (0 <= compress_probability <= 1,
         f"compress_probability must be in 0..1, got {compress_probability}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ShardError(message)


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise ShardError(f"{dest}: exists and is not a directory; choose another destination")
    if overwrite or not dest.is_dir():
        return
    existing = [p.name for p in [dest / MANIFEST, *sorted(dest.glob(SHARD_GLOB))] if p.exists()]
    if existing:
        raise ShardError(f"duplicate output location: {dest} already holds a shard set "
                         f"({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
                         "choose another destination or pass --overwrite (overwrite=True)")


def _remove_shard_set(dest: Path) -> None:
    # the manifest goes first, so an interrupted overwrite never looks like a complete set
    (dest / MANIFEST).unlink(missing_ok=True)
    for path in [*dest.glob(SHARD_GLOB), *dest.glob(f".{SHARD_GLOB}.tmp"),
                 dest / f".{MANIFEST}.tmp"]:
        path.unlink(missing_ok=True)


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: str | os.PathLike, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if sync:  # on disk before the manifest vouches for it
            os.fsync(f.fileno())
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
