"""Source images -> numbered .beton shards and a manifest, in a local folder or under an
``s3://`` prefix.

Each shard is one task: decode its images (skipping and recording bad ones), shrink them to
``max_resolution`` and write the shard under a temporary name. The tasks run in worker processes
on this machine, or as Ray tasks on the cluster when Ray is initialised. When every task is done
the shards get their final names ``shard-00000.beton``, ``shard-00001.beton``, ... and
``manifest.json`` is written last, so a destination without a manifest is never a complete
shard set.

Where a task writes:

* local ``dest``: straight into ``dest`` (hidden temporary names, renamed by the driver). With Ray
  on several nodes, ``dest`` must be one filesystem that every node mounts at the same path (NFS,
  a cluster filesystem): a task checks that ``dest`` exists where it runs, and the driver that
  it sees every shard a task reports, and either raises :class:`ShardError` otherwise.
* ``s3://`` ``dest``: into the temporary directory of the node it runs on, then it uploads the
  shard (verified, ``storage.upload_file``) under ``dest/.tmp-<run id>/`` and deletes the local
  copy. The driver then copies each shard server-side to its final key, checking size and SHA-256
  against what the task reported (``storage.copy_object``), uploads the manifest last, and
  removes the temporary keys (also when the write fails; a killed driver leaves them behind).

A local source folder must likewise be readable at the same path on every node that runs tasks
(the bundled sample set ships inside the package). A worker holds at most
``samples_per_shard x max_resolution^2 x 3`` bytes (about 0.8 GB at 1024 x 500 px).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from . import storage
from .beton import MAX_RESOLUTION_LIMIT, BetonError, BetonReader, page_size_for, write_beton
from .sources import BadImage, Source, SourceError, open_source

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SHARD_NAME = "shard-{:05d}.beton"
SHARD_GLOB = "shard-*.beton"
DEFAULT_SAMPLES_PER_SHARD = 1024
EXECUTORS = ("auto", "process", "ray")
_SHARED_FS = ("with Ray on several nodes a local DEST must be one filesystem mounted at the same "
              "path on every node (NFS, a cluster filesystem): use one, or an s3:// DEST")


class ShardError(ValueError):
    """A shard set cannot be written or fails verification; the message names the path and what
    to do."""


@dataclass
class _Task:
    index: int
    refs: list
    load: Callable[[Any], tuple[np.ndarray, int]]
    settings: dict
    path: str | None = None    # local dest: temporary name, renamed once every shard is written
    upload: str | None = None  # s3 dest: temporary key the task uploads its shard to


def write_shards(source: str | os.PathLike, dest: str | os.PathLike, *,
                 source_format: str | None = None, split: str | None = None,
                 samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD, max_resolution: int = 500,
                 jpeg_quality: int = 90, compress_probability: float = 0.5,
                 workers: int | None = None, executor: str = "auto",
                 ray_options: dict | None = None, overwrite: bool = False,
                 shuffle_seed: int | None = 0, progress: bool = True) -> dict:
    """Write ``source`` (see ``arinv.data.sources.open_source``) as shards in ``dest``, a local
    folder or ``s3://bucket/prefix``, and return the manifest.

    ``executor``: "process" runs the shards in ``workers`` processes here (default
    min(4, CPUs)); "ray" as Ray tasks on the cluster ``ray.init`` connected to, at most
    ``workers`` at a time (default: as many as the cluster schedules), each with
    ``.options(num_cpus=1, **ray_options)`` (e.g. a ``runtime_env``); "auto" picks Ray when it is
    initialised. ``shuffle_seed``: samples are written in an order permuted with this seed
    (sources list images class by class, and a stream read shard by shard must not be), or in
    source order with None. Everything that can be checked without decoding images (settings,
    destination, source listing) is checked before anything is written."""
    settings = {"max_resolution": max_resolution, "jpeg_quality": jpeg_quality,
                "compress_probability": compress_probability}
    _check_settings(samples_per_shard, workers, **settings)
    use_ray = _use_ray(executor)

    def run(tasks: list[_Task]) -> list[dict]:
        if use_ray:
            return _run_ray(tasks, workers, progress, ray_options or {})
        return _run_processes(tasks, workers, progress)

    if storage.is_s3(dest):
        prefix = dest.rstrip("/") + "/"
        _check_s3_dest(prefix, overwrite)
        src = _shuffled(open_source(source, source_format, split), shuffle_seed)
        return _write_to_s3(src, prefix, samples_per_shard, settings, run, shuffle_seed)
    dest = Path(dest).expanduser().absolute()  # tasks may run in another working directory
    _check_dest(dest, overwrite)
    src = _shuffled(open_source(source, source_format, split), shuffle_seed)
    return _write_to_folder(src, dest, samples_per_shard, settings, run, shuffle_seed)


def _shuffled(src: Source, seed: int | None) -> Source:
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(src.refs))
        src.refs = [src.refs[i] for i in order]
    return src


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


def shard_files(dest: str | os.PathLike, fix: str) -> tuple[dict, list[tuple[Path, dict]]]:
    """(manifest, [(path, manifest entry)]) of a local shard set, after checking that every
    shard exists with the manifest's size (cheap: catches truncation); ``fix`` ends errors."""
    dest = Path(dest).expanduser()
    manifest = read_manifest(dest)
    files = []
    for shard in manifest["shards"]:
        path = dest / shard["file"]
        if not path.is_file():
            raise ShardError(f"{path}: missing, though {MANIFEST} lists it; {fix}")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise ShardError(f"{path}: {size} bytes but the manifest says {shard['bytes']} "
                             f"(truncated or altered); {fix}")
        files.append((path, shard))
    return manifest, files


def verify_shards(dest: str | os.PathLike) -> dict:
    """Check every shard against the manifest (size, sha256, sample count); return the manifest."""
    fix = f"rewrite the set with 'arinv data write SOURCE {dest} --overwrite'"
    manifest, files = shard_files(dest, fix)
    for path, shard in files:
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

def _write_to_folder(src: Source, dest: Path, samples_per_shard: int, settings: dict,
                     run: Callable[[list[_Task]], list[dict]],
                     shuffle_seed: int | None = None) -> dict:
    if dest.is_dir():
        _remove_shard_set(dest)  # only leftovers of an interrupted run, unless overwrite
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    tasks = _plan(src, samples_per_shard, settings, folder=dest)
    try:
        results = run(tasks)
        manifest = _manifest(src, samples_per_shard, {**settings, "shuffle_seed": shuffle_seed},
                             results)
        _publish(dest, tasks, results)
        _write_json_atomically(dest / MANIFEST, manifest)
    except BaseException:
        for task in tasks:
            Path(task.path).unlink(missing_ok=True)
        if created and not any(dest.iterdir()):
            dest.rmdir()
        raise
    return manifest


def _write_to_s3(src: Source, prefix: str, samples_per_shard: int, settings: dict,
                 run: Callable[[list[_Task]], list[dict]],
                 shuffle_seed: int | None = None) -> dict:
    staging = f"{prefix}.tmp-{uuid.uuid4().hex[:12]}/"
    tasks = _plan(src, samples_per_shard, settings, staging=staging)
    try:
        results = run(tasks)
        manifest = _manifest(src, samples_per_shard, {**settings, "shuffle_seed": shuffle_seed},
                             results)
        _publish_s3(prefix, tasks, results, manifest)
    finally:
        # leftover temporary keys are harmless (no manifest names them): never mask the outcome
        with contextlib.suppress(storage.StorageError):
            storage.delete_prefix(staging)
    return manifest


def _plan(src: Source, samples_per_shard: int, settings: dict, *, folder: Path | None = None,
          staging: str | None = None) -> list[_Task]:
    """One task per shard, writing into ``folder`` or uploading under ``staging``."""
    n = samples_per_shard
    return [_Task(i, src.refs[start:start + n], src.load, settings,
                  path=str(folder / f".{SHARD_NAME.format(i)}.tmp") if folder else None,
                  upload=staging + SHARD_NAME.format(i) if staging else None)
            for i, start in enumerate(range(0, len(src.refs), n))]


def _use_ray(executor: str) -> bool:
    if executor not in EXECUTORS:
        raise ShardError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    ray = sys.modules.get("ray")  # never import Ray just to ask: arinv runs without it
    up = ray is not None and ray.is_initialized()
    if executor == "ray" and not up:
        raise ShardError("executor='ray' but Ray is not initialised: call ray.init(address=...) "
                         "first, or use 'arinv data write --ray-address ADDR'")
    return executor == "ray" or (executor == "auto" and up)


def _progress_bar(tasks: list[_Task], progress: bool):
    from tqdm import tqdm

    return tqdm(total=sum(len(t.refs) for t in tasks), unit="img", desc="writing shards",
                disable=not progress)


def _run_processes(tasks: list[_Task], workers: int | None, progress: bool) -> list[dict]:
    import ffcv.writer  # noqa: F401 - imported once here (seconds), not in every forked worker

    workers = min(4, _cpu_count()) if workers is None else workers
    results: list[dict] = [{}] * len(tasks)
    # fork: children see the caller's current environment (credentials, endpoints), which a
    # forkserver started earlier would not. Forking a caller with live Ray threads once crashed
    # a child (malloc corruption); such callers should use the Ray executor.
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool, \
            _progress_bar(tasks, progress) as bar:
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


def _run_ray(tasks: list[_Task], workers: int | None, progress: bool,
             options: dict) -> list[dict]:
    import ray

    write = ray.remote(_write_shard).options(**{"num_cpus": 1, **options})
    results: list[dict] = [{}] * len(tasks)
    waiting, running = collections.deque(range(len(tasks))), {}
    with _progress_bar(tasks, progress) as bar:
        try:
            while waiting or running:
                while waiting and len(running) < (workers or len(tasks)):
                    i = waiting.popleft()
                    running[write.remote(tasks[i])] = i
                [done], _ = ray.wait(list(running), num_returns=1)
                i = running.pop(done)
                results[i] = _ray_result(done)
                bar.update(len(tasks[i].refs))
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            if running:  # stopped before the caller removes their temporary files
                ray.wait(list(running), num_returns=len(running), timeout=30)
            raise
    return results


def _ray_result(ref) -> dict:
    """The task's result; our own errors come back as themselves, so messages stay readable
    (Ray's wrapper, with the remote traceback, is chained as the cause)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, (ShardError, SourceError, BetonError, storage.StorageError)):
            raise e.cause from e
        raise


def _shrink(resizer, image: np.ndarray, max_resolution: int) -> np.ndarray:
    """ffcv's resizer (long side <= max_resolution), except that a very thin image (3 x 2000
    at 500 would get a 0-px side, which cv2 refuses) keeps sides of at least 1 px."""
    h, w = image.shape[:2]
    scale = max_resolution / max(h, w)
    if scale >= 1 or min(h, w) * scale >= 1:
        return resizer(image, max_resolution)
    import cv2

    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _write_shard(task: _Task) -> dict:
    """Runs in a worker process or a Ray task: decode, shrink, write one shard (and with
    ``task.upload`` upload it from this node); report what was skipped and where it ran."""
    host = socket.gethostname()
    _check_reachable(task, host)
    from ffcv.fields.rgb_image import resizer  # after the check: importing ffcv takes seconds

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
        items.append((_shrink(resizer, image, task.settings["max_resolution"]), label))
    report = {"num_samples": len(items), "skipped": skipped, "host": host}
    if not items:
        return report
    if task.upload is None:
        return {**report, **_write_file(task.path, items, task.settings)}
    with tempfile.TemporaryDirectory(prefix="arinv-shard-") as tmp:
        path = os.path.join(tmp, SHARD_NAME.format(task.index))
        written = _write_file(path, items, task.settings)
        try:
            storage.upload_file(path, task.upload, sha256=written["sha256"])
        except storage.StorageError as e:
            raise storage.StorageError(f"{e} (uploading shard {task.index} from {host})") from e
    return {**report, **written}


def _check_reachable(task: _Task, host: str) -> None:
    """Before decoding anything: can this node write where the shard goes?"""
    if task.path is not None and not os.path.isdir(os.path.dirname(task.path)):
        raise ShardError(f"{os.path.dirname(task.path)}: no such directory on {host}, where "
                         f"shard {task.index} is written; {_SHARED_FS}")
    if task.upload is not None:
        try:
            storage.check_access(task.upload.rsplit("/", 1)[0] + "/", write=True)
        except storage.StorageError as e:
            raise storage.StorageError(f"{e} (checked from {host}, which writes shard "
                                       f"{task.index})") from e


def _write_file(path: str, items: list, settings: dict) -> dict:
    write_beton(path, items, **settings)
    return {"bytes": os.path.getsize(path), "sha256": _sha256(path, sync=True)}


def _publish(dest: Path, tasks: list[_Task], results: list[dict]) -> None:
    """Rename the temporary shards to consecutive numbers (a shard of only bad images has no
    file), once the driver has seen every one of them."""
    written = [(t, r) for t, r in zip(tasks, results) if r["num_samples"]]
    for task, result in written:
        _check_visible(task, result)
    for number, (task, _) in enumerate(written):
        os.replace(task.path, dest / SHARD_NAME.format(number))


def _check_visible(task: _Task, result: dict) -> None:
    try:
        seen = f"{os.path.getsize(task.path)} bytes"
    except OSError:
        seen = "missing"
    if seen != f"{result['bytes']} bytes":
        raise ShardError(f"{task.path}: written for shard {task.index} on {result['host']} "
                         f"({result['bytes']} bytes), but {seen} on {socket.gethostname()}, "
                         f"where the shard set is published; {_SHARED_FS}")


def _publish_s3(prefix: str, tasks: list[_Task], results: list[dict], manifest: dict) -> None:
    """Copy the uploaded shards to consecutive numbers, each verified against the size and
    sha256 its task reported, remove shards of an overwritten set, then upload the manifest."""
    client = storage.s3_client()
    storage.delete(prefix + MANIFEST, client=client)  # an overwritten set never looks complete
    written = [(t, r) for t, r in zip(tasks, results) if r["num_samples"]]
    finals = [prefix + SHARD_NAME.format(number) for number in range(len(written))]

    def copy(final: str, task: _Task, result: dict) -> None:
        storage.copy_object(task.upload, final, sha256=result["sha256"], size=result["bytes"],
                            client=client)

    with ThreadPoolExecutor(8) as pool:  # server-side copies: no bytes through this machine
        list(pool.map(copy, finals, *zip(*written)))
    for stale in sorted(set(_s3_shard_set(prefix)) - set(finals) - {prefix + MANIFEST}):
        storage.delete(stale, client=client)
    with tempfile.TemporaryDirectory(prefix="arinv-manifest-") as tmp:
        _write_json_atomically(Path(tmp) / MANIFEST, manifest)
        storage.upload_file(Path(tmp) / MANIFEST, prefix + MANIFEST, client=client)


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

def _check_settings(samples_per_shard: int, workers: int | None, *, max_resolution: int,
                    jpeg_quality: int, compress_probability: float) -> None:
    problems = [
        (samples_per_shard >= 1, f"samples_per_shard must be >= 1, got {samples_per_shard}"),
        (workers is None or workers >= 1, f"workers must be >= 1, got {workers}"),
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


def _check_s3_dest(prefix: str, overwrite: bool) -> None:
    storage.check_access(prefix, write=True)  # credentials, bucket, permission: in seconds
    existing = [] if overwrite else _s3_shard_set(prefix)
    if existing:
        names = [uri[len(prefix):] for uri in existing]
        raise ShardError(f"duplicate output location: {prefix} already holds a shard set "
                         f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); "
                         "choose another destination or pass --overwrite (overwrite=True)")


def _s3_shard_set(prefix: str) -> list[str]:
    """The manifest and shard-*.beton objects directly under ``prefix``."""
    uris = storage.list_prefix(prefix + MANIFEST) + storage.list_prefix(prefix + "shard-")
    names = [u[len(prefix):] for u in uris]
    return [prefix + name for name in names
            if name == MANIFEST or ("/" not in name and fnmatch(name, SHARD_GLOB))]


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
