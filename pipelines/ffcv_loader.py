"""ffcv's native ``Loader`` over a shard set on this node's disk: the alternative to the Ray Data
stream (``data.loader: ffcv``), yielding the same batches (uint8 N x 3 x R x R images, int64
labels). It needs no Ray, though it runs inside a Ray Train worker.

Sharding: sample ``i`` of the set (manifest order, as in ``pipelines.ray_data``'s ``index``) goes
to rank ``pos(i) % world``, where ``pos`` is its place in a permutation seeded by
``(seed, epoch)`` (train) or the identity (eval). Every rank computes the same permutation, so the
ranks' subsets are disjoint and cover the set once per epoch for any sample count; ffcv's own
``distributed=True`` would need a torch process group. A rank reads its samples shard by shard
(shards in a per-epoch random order for train); ffcv reads them in the order given to it
(``OrderOption.SEQUENTIAL`` over our permuted indices), so the order is known and reproducible
and ``with_index=True`` can return each sample's global index.

Speed: ffcv JIT-compiles (numba) the pipeline of every ``Loader`` it constructs, so the first
epoch of a process is slower: measured on a busy 2-core machine, about 6 s for the train
pipeline and 1 s for eval (11 s and 3 s with ``num_workers=2``, compiled for parallel loops). Because a ``Loader`` reads one file, one is built per configuration and pointed at each
shard in turn (``_point_at``) instead of compiling once per shard.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from arinv.data.shards import ShardError, shard_files

_LOCAL_ONLY = ("ffcv reads local shard sets: copy the complete set (shards and manifest.json) to "
               "this node's disk, or for s3:// use data.loader=ray")
_FIELDS = ["image", "label"]  # arinv.data.beton.write_beton's fields, in file order
_IDLE: dict[tuple, list] = {}  # compiled Loaders not in use, by configuration


def ffcv_batches(shard_dir: str, *, rank: int, world: int, batch_size: int, resolution: int,
                 train: bool, epoch: int, seed: int = 0,
                 crop_scale: tuple[float, float] = (0.08, 1.0), num_workers: int = 1,
                 with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of ``(images, labels)`` batches for worker ``rank`` of ``world``: uint8
    N x 3 x R x R and int64 N CPU tensors that the caller owns. ``with_index=True`` adds the
    samples' int64 global indices as a third tensor.

    ``train``: random-resized crop (area ``crop_scale``) + horizontal flip, shuffled per epoch;
    else a centre crop of 224/256 of the short side, in set order. Batches span shards; only
    the last may be short. Every rank must pass the same ``seed`` and ``epoch``. Errors about
    the shard set (``ShardError``) are raised here, before the first batch.
    """
    _check_args(rank, world, batch_size, resolution, seed, num_workers)
    shards = local_shards(shard_dir)
    plan = _assign([n for _, n in shards], rank, world, train, epoch, seed)
    key = (train, resolution, tuple(crop_scale), batch_size, num_workers)
    reads = [(shards[s][0], local, base) for s, local, base in plan]
    return _rebatch(_read(reads, key), batch_size, with_index)


def _check_args(rank, world, batch_size, resolution, seed, num_workers) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    for name, value in (("batch_size", batch_size), ("resolution", resolution),
                        ("num_workers", num_workers)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def local_shards(shard_dir: str) -> list[tuple[Path, int]]:
    """(path, sample count) of each shard in manifest order, after a size check of each."""
    if "://" in str(shard_dir):
        raise ShardError(f"{shard_dir}: {_LOCAL_ONLY}")
    folder = Path(shard_dir).expanduser()
    if not folder.is_dir():
        raise ShardError(f"{folder}: no such directory; {_LOCAL_ONLY}")
    fix = (f"copy the complete set to this node again or rewrite it with 'arinv data write' "
           f"({_LOCAL_ONLY})")
    _, files = shard_files(folder, fix)
    return [(path, shard["num_samples"]) for path, shard in files]


def _assign(counts: list[int], rank: int, world: int, train: bool, epoch: int,
            seed: int) -> list[tuple[int, np.ndarray, int]]:
    """(shard number, local indices in reading order, shard's first global index) for each
    shard ``rank`` reads this epoch."""
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if train:
        rng = np.random.default_rng([seed, epoch])
        mine = rng.permutation(int(starts[-1]))[rank::world]
        shard_order = rng.permutation(len(counts))
    else:
        mine = np.arange(rank, int(starts[-1]), world)
        shard_order = np.arange(len(counts))
    shard_of = np.searchsorted(starts, mine, side="right") - 1
    grouped = mine[np.argsort(shard_of, kind="stable")]  # keeps the permuted order per shard
    per_shard = np.split(grouped, np.cumsum(np.bincount(shard_of, minlength=len(counts)))[:-1])
    return [(int(s), (per_shard[s] - starts[s]).astype(np.uint64), int(starts[s]))
            for s in shard_order if len(per_shard[s])]


def _read(reads: list[tuple[Path, np.ndarray, int]],
          key: tuple) -> Iterator[tuple[torch.Tensor, ...]]:
    """ffcv's batches shard by shard as owned (images, labels, global indices) tensors."""
    if not reads:
        return
    threads = torch.get_num_threads()
    idle = _IDLE.setdefault(key, [])
    try:
        loader = idle.pop()
    except IndexError:  # none compiled yet, or all in use by other iterators
        loader = _new_loader(reads[0][0], key)
    try:
        for path, local, base in reads:
            _point_at(loader, path, local)
            done = 0
            for images, labels in _epoch(loader, path):
                # ffcv's Loader and its loading thread set torch's process-wide intra-op
                # thread count to their num_workers; training keeps its own
                torch.set_num_threads(threads)
                n = len(labels)
                index = torch.from_numpy(local[done:done + n].astype(np.int64) + base)
                # ffcv reuses its output buffers a few batches later: copy out
                yield images.clone(), labels.clone(), index
                done += n
    finally:
        idle.append(loader)


def _epoch(loader, path: Path) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``iter(loader)``, except that a loading thread that dies raises here: ffcv's own
    iterator would wait for its next batch forever."""
    batches = iter(loader)
    try:
        while True:
            while batches.output_queue.empty() and batches.is_alive():
                batches.join(0.005)
            if batches.output_queue.empty():
                raise RuntimeError(f"{path}: ffcv's loading thread failed (traceback above); "
                                   f"check the set with 'arinv data verify {path.parent}'")
            try:
                yield next(batches)
            except StopIteration:
                return
    finally:
        _stop(batches)


def _stop(batches) -> None:
    """End ffcv's loading thread. Its ``close()`` only signals, which the thread sees while it
    waits for room in a full queue (every 0.5 s), not while it waits to queue its end marker:
    take a batch off for that one."""
    batches.close()
    while batches.is_alive():
        batches.join(0.6)
        with contextlib.suppress(queue.Empty):
            batches.output_queue.get_nowait()


def _new_loader(path: Path, key: tuple):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    train, resolution, crop_scale, batch_size, num_workers = key
    size = (resolution, resolution)
    if train:
        image = [RandomResizedCropRGBImageDecoder(size, scale=crop_scale), RandomHorizontalFlip()]
    else:
        image = [CenterCropRGBImageDecoder(size, ratio=224 / 256)]
    pipelines = {"image": image + [ToTensor(), ToTorchImage(channels_last=False)],
                 "label": [IntDecoder(), ToTensor(), Squeeze(1)]}
    return Loader(str(path), batch_size=batch_size, num_workers=num_workers, os_cache=True,
                  order=OrderOption.SEQUENTIAL, seed=0, pipelines=pipelines, drop_last=False)


def _point_at(loader, path: Path, indices: np.ndarray) -> None:
    """Make ``loader`` read ``indices`` of ``path``, in that order, keeping its compiled code.

    The code ffcv 1.0.2 compiles takes the file's metadata, memory map and buffers as arguments;
    these are the attributes its Loader derives from its file. The graph's metadata sizes the
    decode buffers (largest image of the file) when iteration allocates them.
    """
    from ffcv.memory_managers import OSCacheManager
    from ffcv.reader import Reader
    from ffcv.traversal_order import Sequential

    reader = Reader(str(path))
    if reader.field_names != _FIELDS:
        raise ShardError(f"{path}: fields {reader.field_names}, expected {_FIELDS} (not an "
                         "arinv shard); rewrite the set with 'arinv data write'")
    loader.fname, loader.reader = str(path), reader
    loader.memory_manager = OSCacheManager(reader)
    loader.graph.metadata, loader.graph.handlers = reader.metadata, reader.handlers
    loader.indices = loader.first_traversal_order = indices
    loader.traversal_order = Sequential(loader)


def _rebatch(parts: Iterator[tuple[torch.Tensor, ...]], batch_size: int,
             with_index: bool) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of ``batch_size`` across shard boundaries (the last may be short)."""
    pending = None
    for part in parts:
        pending = part if pending is None else tuple(map(torch.cat, zip(pending, part)))
        while len(pending[0]) >= batch_size:
            batch = tuple(t[:batch_size] for t in pending)
            yield batch if with_index else batch[:2]
            pending = tuple(t[batch_size:] for t in pending)
        if not len(pending[0]):
            pending = None
    if pending is not None:
        yield pending if with_index else pending[:2]
