"""The single-process backend of the training loop (``--local``: no Ray, no MLflow).

Data: the run's shard sets (``arinv.data.reader.run_shards``: ``data.shards``, or the source
written as shards under the workdir first, as the Ray pipelines do), read by ``ShardBatches``.
Checkpoints: ``WORKDIR/checkpoint/`` (``state.pt`` and, after the last epoch, the result files),
replaced atomically every epoch. Metrics: one JSON line per epoch in ``WORKDIR/metrics.jsonl``;
image grids under ``WORKDIR/grids/epoch_NNNN/``; the result in ``WORKDIR/metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from arinv.checkpoint import STATE
from arinv.config import flatten
from arinv.data.reader import ShardBatches, run_shards

from .run import fit
from .runtime import resolve_device
from .tasks import make_task

CHECKPOINT = "checkpoint"


class LocalBackend:
    rank, world = 0, 1

    def __init__(self, task, workdir: str | Path, shards: str, *, progress: bool = True):
        cfg = task.cfg
        self.task, self.workdir, self.shards = task, Path(workdir), shards
        self.device, self.progress = resolve_device(cfg.runtime.device), progress
        self.checkpoint = self.workdir / CHECKPOINT
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._readers: dict[tuple[str, int], ShardBatches] = {}

    @property
    def skipped(self) -> int:
        """Samples that did not decode, so far (dropped from their batches)."""
        return sum(b.skipped for b in self._readers.values())

    def _batches(self, split: str, batch_size: int, train: bool) -> ShardBatches:
        """One reader per (split, batch size), kept: its manifest is read once."""
        key = (split, batch_size)
        if key not in self._readers:
            cfg = self.task.cfg
            self._readers[key] = ShardBatches(
                f"{self.shards}/{split}", batch_size, resolution=self.task.resolution,
                train=train, crop_scale=(cfg.data.crop_min_scale, 1.0), seed=cfg.runtime.seed,
                shuffle=split == "train", on_corrupt=cfg.data.on_corrupt,
                classes=cfg.data.classes if split == "train" else None)
        return self._readers[key]

    def train_batches(self, epoch: int, batch_size: int):
        batches = self._batches("train", batch_size, self.task.augment)
        batches.set_epoch(epoch)
        return batches

    def eval_batches(self, batch_size: int):
        return self._batches("val", batch_size, False)

    @contextlib.contextmanager
    def latest(self):
        yield self.checkpoint if (self.checkpoint / STATE).is_file() else None

    def save(self, epoch: int, write, metrics: dict) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=self.workdir))
        write(tmp)
        old = self.workdir / ".checkpoint-old"
        shutil.rmtree(old, ignore_errors=True)
        if self.checkpoint.exists():
            self.checkpoint.rename(old)
        tmp.rename(self.checkpoint)
        shutil.rmtree(old, ignore_errors=True)

    def log_metrics(self, metrics: dict, step: int) -> None:
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def logged_steps(self, key: str) -> set[int]:
        f = self.workdir / "metrics.jsonl"
        if not f.is_file():
            return set()
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return {r["step"] for r in rows if key in r}

    def log_files(self, files: dict[str, bytes], folder: str) -> None:
        for name, data in files.items():
            path = self.workdir / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def fit_local(cfg, workdir: str | Path, *, progress: bool = True, log=print,
              encoder_checkpoint=None) -> dict:
    """Train ``cfg`` (encoder or generator) in this process, resuming from
    ``workdir/checkpoint``; writes ``workdir/metrics.json`` and returns the same dict.
    ``encoder_checkpoint``: a generator's encoder file, when ``encoder.checkpoint`` is a
    registry URI that the caller resolved."""
    workdir = Path(workdir)
    inputs = {"encoder_checkpoint": encoder_checkpoint} if encoder_checkpoint else {}
    task = make_task(cfg, log=log, **inputs)
    shards = run_shards(cfg.data, workdir, progress=progress)
    backend = LocalBackend(task, workdir, shards, progress=progress)
    classes = backend.eval_batches(1).classes
    task.check_classes(classes, f"data.shards {shards}")
    out = fit(task, backend, log=log)
    result = {"name": cfg.name, "config": flatten(cfg), "classes": classes,
              "history": out["history"], "checkpoint": str(backend.checkpoint / STATE),
              **task.results(out["files"])}
    for name in out["files"]:
        result.setdefault("files", {})[name] = str(backend.checkpoint / name)
    (workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result
