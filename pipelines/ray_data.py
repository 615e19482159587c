"""Ray Data over an arinv shard set (a local directory or an ``s3://`` prefix).

Read tasks parse the .beton layout themselves (``arinv.data.beton.BetonReader``) and emit rows of
(encoded image, size, label, global index); decoding and augmentation run in a ``map_batches``
stage, so CPU-only nodes can do them for GPU nodes. Output batches: ``image`` uint8 N x 3 x R x R,
``label`` int64, ``index`` int64 (the sample's position in the shard set, for exactly-once checks).
Shards on S3 are fetched into a node-local, size-bounded, checksum-verified cache.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import random
import signal
import sys
import threading

import numpy as np
import pyarrow as pa
from ray.data import DataContext, Dataset, read_datasource
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from arinv.data import storage
from arinv.data.reader import (
    DEFAULT_CACHE,
    DEFAULT_CACHE_BYTES,
    decode_rows,
    load_manifest,
    open_shard,
)
from arinv.data.reader import join as _join
from arinv.data.shards import verify_shards


def _read_chunk(uri, shard, cache, start, stop, base, round_=0):
    with open_shard(uri, shard, cache) as reader:
        recs = reader.records(start, stop)
    yield pa.table({
        "shard": pa.array([shard["file"]] * len(recs), pa.string()),
        "position": pa.array(np.arange(start, stop), pa.int64()),  # index within the shard
        "round": pa.array([round_] * len(recs), pa.int64()),  # the execution (epoch) it is in
        "payload": pa.array([r.payload for r in recs], pa.binary()),
        "mode": pa.array([r.mode for r in recs], pa.uint8()),
        "width": pa.array([r.width for r in recs], pa.int32()),
        "height": pa.array([r.height for r in recs], pa.int32()),
        "label": pa.array([r.label for r in recs], pa.int64()),
        "index": pa.array(np.arange(base + start, base + stop), pa.int64()),
    })


class BetonDatasource(Datasource):
    """One read task per ``rows_per_task`` consecutive samples of a shard."""

    def __init__(self, uri: str, manifest: dict, *, rows_per_task: int = 512,
                 cache: tuple[str, int] = (DEFAULT_CACHE, DEFAULT_CACHE_BYTES),
                 shuffle: bool = False, seed: int | None = None):
        self.uri, self.manifest, self.rows_per_task = uri, manifest, rows_per_task
        self.cache, self.shuffle, self.seed = cache, shuffle, seed
        self.rounds = 0  # executions planned so far (one per epoch): seeds that epoch's order

    def estimate_inmemory_data_size(self) -> int:
        return sum(s["bytes"] for s in self.manifest["shards"])

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        # Fixed-size tasks: Ray's parallelism hint would cut small sets into tasks too small to
        # amortise their scheduling (measured: 54-row tasks ran at half the speed of 256-row ones).
        step = self.rows_per_task
        tasks, base = [], 0
        for shard in self.manifest["shards"]:
            n, path = shard["num_samples"], _join(self.uri, shard["file"])
            for start in range(0, n, step):
                stop = min(n, start + step)
                meta = BlockMetadata(num_rows=stop - start,
                                     size_bytes=shard["bytes"] * (stop - start) // max(1, n),
                                     exec_stats=None, input_files=(path,))
                fn = functools.partial(_read_chunk, self.uri, shard, self.cache, start, stop, base,
                                       self.rounds)
                tasks.append(ReadTask(fn, meta, per_task_row_limit=per_task_row_limit))
            base += n
        if self.shuffle:  # planned again for every epoch, so every epoch gets its own order
            rng = random.Random(None if self.seed is None else self.seed * 100003 + self.rounds)
            rng.shuffle(tasks)
        self.rounds += 1
        return tasks


def decode_batch(batch: dict, *, split_transform: str, resolution: int,
                 crop_scale: tuple[float, float] = (0.08, 1.0), uri: str = "",
                 on_corrupt: str = "skip", seed: int | None = None,
                 classes: list[int] | None = None) -> dict:
    """The map stage: decode + crop a batch of rows (``arinv.data.reader.decode_rows``):
    random-resized-crop + flip ("train") or resize + centre crop ("eval"); uint8 NCHW out.
    ``ok`` is False for a sample that did not decode (skipped with a warning naming its shard
    and index; consumers drop and count it), unless ``on_corrupt="fail"``. With ``seed`` the
    random crops are drawn from (seed, epoch round, the batch's first sample), so a run with
    the same seed crops the same way. ``classes``: rows with other labels are dropped before
    decoding."""
    if classes is not None:
        keep = np.isin(batch["label"], classes)
        if not keep.all():
            batch = {k: v[keep] for k, v in batch.items()}
    _import_uninterrupted("arinv.data.transforms")  # torch, safe from a cancel mid-import

    def where(i: int) -> str:
        return f"{_join(uri, str(batch['shard'][i]))} sample {int(batch['position'][i])}"

    rng = None
    if seed is not None and len(batch["index"]):
        rng = np.random.default_rng([seed, int(batch["round"][0]), int(batch["index"][0])])
    images, ok = decode_rows(batch["payload"], batch["mode"], batch["width"], batch["height"],
                             where, on_corrupt=on_corrupt, split_transform=split_transform,
                             resolution=resolution, crop_scale=crop_scale, rng=rng)
    return {"image": images, "label": batch["label"].astype(np.int64),
            "index": batch["index"].astype(np.int64), "ok": ok}


def _import_uninterrupted(name: str):
    """``importlib.import_module(name)``, with KeyboardInterrupt held back until it is done.

    Ray cancels a running task by raising KeyboardInterrupt in it (``ray.cancel`` ->
    ``_thread.interrupt_main``), and Ray Data cancels its in-flight tasks whenever a consumer
    stops early (a Train worker group restarting after a failure, a ``take``). Landing inside a
    first ``import torch``, that interrupt leaves torch half-initialised in a worker process
    that Ray then reuses: every later decode task there fails ("partially initialized module
    'torch'", SystemError or a crash). Deferring it makes the cancel take effect right after
    the import instead (``tests/integration/test_ray_data.py`` cancels a task inside one)."""
    if name in sys.modules:
        return sys.modules[name]
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)  # no Python-level interrupt can land here
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        return importlib.import_module(name)
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            previous(signal.SIGINT, held[0])  # the cancel goes ahead, with the module intact


def read_shards(uri: str, *, split_transform: str = "train", resolution: int = 224,
                rows_per_task: int = 512, decode_batch_size: int | None = None,
                cache_dir: str = DEFAULT_CACHE, cache_bytes: int = DEFAULT_CACHE_BYTES,
                verify: str = "size", runtime_env: dict | None = None,
                num_cpus: float | None = None,
                crop_scale: tuple[float, float] = (0.08, 1.0),
                shuffle: bool | None = None, on_corrupt: str = "skip",
                seed: int | None = None, classes: list[int] | None = None) -> Dataset:
    """A Ray Dataset of decoded, cropped uint8 batches from the shard set at ``uri``.

    ``verify``: "size" checks each local shard's size against the manifest when it is opened
    (catches truncation cheaply), "sha256" also re-hashes every local shard once, up front; S3 shards are always verified by
    sha256 when they enter the node-local cache. ``decode_batch_size=None`` decodes each read
    block as one batch, which lets Ray fuse reading and decoding into one task (a batch size
    forces a separate, re-bundling stage). ``runtime_env`` goes to the read and decode
    tasks (e.g. ``{"env_vars": {"AWS_ENDPOINT_URL": ...}}`` when the cluster's nodes lack them).
    ``num_cpus`` is the logical CPU share of each read + decode task (Ray's default: 1).
    ``crop_scale``: the random-resized-crop's area range for ``split_transform="train"``.
    ``on_corrupt``: a sample that does not decode is flagged ``ok=False`` with a warning
    ("skip") or fails the stream ("fail"). Local shards are sha256-checked against the manifest
    once per file version per node (``arinv.data.reader.verify_local``) before they are read.
    ``seed`` makes the chunk order and the random crops of every epoch a function of the seed
    (with ``preserve_order`` in the consumer's execution options, the stream is reproducible).
    ``shuffle`` (default: for "train") reads the chunks of the shards in a new random order
    every epoch; the writer already shuffled samples across shards, and a consumer adds a local
    shuffle buffer (``iter_torch_batches(local_shuffle_buffer_size=...)``) for the rest.
    ``classes``: only samples with these labels (dropped in the decode stage, undecoded).
    """
    if split_transform not in ("train", "eval"):
        raise ValueError(f"split_transform must be 'train' or 'eval', got {split_transform!r}")
    if verify not in ("size", "sha256"):
        raise ValueError(f"verify must be 'size' or 'sha256', got {verify!r}")
    manifest = load_manifest(uri)
    if verify == "sha256" and not storage.is_s3(uri):
        verify_shards(uri)
    source = BetonDatasource(uri, manifest, rows_per_task=rows_per_task,
                             cache=(cache_dir, cache_bytes),
                             shuffle=split_transform == "train" if shuffle is None else shuffle,
                             seed=seed)
    env = {"runtime_env": runtime_env} if runtime_env else {}
    if num_cpus is not None:
        env["num_cpus"] = num_cpus
    # One block per read task: with Ray's default block count it splits each task's output
    # (SplitBlocks), which also stops it fusing the decode stage into the read.
    blocks = sum(math.ceil(s["num_samples"] / rows_per_task) for s in manifest["shards"])
    with _dataset_context():
        return read_datasource(source, override_num_blocks=blocks, **env).map_batches(
            decode_batch, batch_size=decode_batch_size, batch_format="numpy",
            fn_kwargs={"split_transform": split_transform, "resolution": resolution,
                       "crop_scale": tuple(crop_scale), "uri": uri, "on_corrupt": on_corrupt,
                       "seed": seed, "classes": None if classes is None else list(classes)},
            **env)


@contextlib.contextmanager
def _dataset_context():
    """Settings for the datasets created inside (each copies the current DataContext when it is
    created), restored afterwards so that the caller's other datasets keep theirs.

    Ray Data's per-operator resource reservation keeps half the CPUs for operators this pipeline
    does not have (it is one fused read + decode operator): on 2 cores it ran one decode task
    at a time instead of two (figures in docs/benchmarks.md)."""
    ctx = DataContext.get_current()
    saved = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        ctx.op_resource_reservation_enabled = saved
