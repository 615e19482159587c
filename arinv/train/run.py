"""The one training loop: ``fit(task, backend)`` trains every model kind (a task, see
``arinv.train.tasks``) under every backend (one process: ``arinv.train.local.LocalBackend``; a
Ray Train worker: ``pipelines.trainer.RayBackend``).

Per epoch: seed (by epoch and rank, so a resumed run draws what the original would), train
over the backend's batches (gradient accumulation up to the global batch), step the schedules,
reduce the metrics over workers, evaluate on held-out images at the task's cadence (rank 0),
log metrics and image grids, save a checkpoint. A run resumes from its backend's latest
checkpoint; a finished run relaunched trains nothing.

A backend supplies:

- ``device``, ``rank``, ``world``, ``progress`` (show the epoch's progress bar);
- ``train_batches(epoch, batch_size)`` / ``eval_batches(batch_size)``: this worker's
  (uint8 N x 3 x R x R, int64 N) batches of the training and held-out shard sets;
- ``latest()``: a context manager giving the latest checkpoint directory (or None) and
  ``save(epoch, write, metrics)``: ``write(dir)`` fills a directory that becomes the latest
  checkpoint (every rank calls ``save``; only rank 0 writes);
- ``log_metrics(metrics, step)``, ``log_files(files, folder)`` (rank 0);
- ``logged_steps(key)``: the steps of metric ``key`` the tracking store already holds (None
  where it cannot tell). On resume, rank 0 logs again each checkpointed epoch whose metrics
  the store lacks: logging may be asynchronous, so a process killed after its checkpoint was
  persisted can take that epoch's metrics with it; the checkpoint's history is the record;
- ``skipped``: how many stored samples did not decode so far (dropped from their batches;
  each epoch's count is the ``corrupt_samples`` metric).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable

import torch

from arinv.checkpoint import STATE, save_checkpoint
from arinv.config import flatten, to_dict

from .runtime import seed_everything, use_deterministic_algorithms
from .state import resume

EPOCH_SEED = 1009  # seed of (epoch, rank): seed + EPOCH_SEED * epoch + rank


def fit(task, backend, *, log=print) -> dict:
    """Train ``task`` under ``backend`` (resuming from its latest checkpoint); returns
    ``{"history", "files", "resumed_from"}`` (``files``: the final evaluation's, by name)."""
    if task.cfg.runtime.deterministic:
        use_deterministic_algorithms()
    seed_epoch(task, backend, 0)
    modules = task.build(backend.device)
    start, history, files = restore(task, backend, modules, log)
    if history and backend.rank == 0:
        backfill(backend, history)
    if start >= task.epochs and all(f in files for f in task.final_files):
        return {"history": history, "files": files, "resumed_from": start}
    micro, accumulate = task.cfg.scaling.accumulation(task.batch_size, backend.world)
    val = collect(backend.eval_batches(micro), task.eval_images) if backend.rank == 0 else None
    if start >= task.epochs:  # trained far enough (optim.epochs lowered), never evaluated
        files = task.evaluate(*val, periodic=False, final=True, batch_size=micro)[1] \
            if backend.rank == 0 else {}
        backend.save(start, lambda d: write_checkpoint(d, task, modules, start, history, files),
                     history[-1])
        return {"history": history, "files": files, "resumed_from": start}
    trainables = task.wrap(lambda m: ddp(m, backend))
    for epoch in range(start, task.epochs):
        seed_epoch(task, backend, epoch)
        skipped = backend.skipped
        with join(trainables):
            summary = task.train_epoch(
                backend.train_batches(epoch, micro), accumulate=accumulate,
                progress=backend.progress and backend.rank == 0,
                desc=f"{task.name} epoch {epoch + 1}/{task.epochs}")
        summary["corrupt_samples"] = backend.skipped - skipped
        metrics = {"epoch": epoch + 1, **reduce(summary, task.reduce_keys, backend.world),
                   **task.end_epoch()}
        last, files = epoch + 1 == task.epochs, {}
        if backend.rank == 0:
            periodic = bool(task.eval_every) and ((epoch + 1) % task.eval_every == 0 or last)
            if periodic or last:
                evaluated, files = task.evaluate(*val, periodic=periodic, final=last,
                                                 batch_size=micro)
                metrics.update(evaluated)
                images = {k: v for k, v in files.items() if k.endswith(".png")}
                if images:
                    backend.log_files(images, f"grids/epoch_{epoch + 1:04d}")
            backend.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, epoch + 1)
        history.append(metrics)
        kept = files if last else {}
        backend.save(epoch + 1, lambda d: write_checkpoint(d, task, modules, epoch + 1, history,
                                                           kept), metrics)
    return {"history": history, "files": files, "resumed_from": start}


def backfill(backend, history: list[dict]) -> None:
    """Log each epoch of a resumed ``history`` whose metrics the tracking store lacks (judged by
    a metric every epoch has), so no epoch is missing and none is logged twice."""
    keys = sorted(set.intersection(*(set(h) for h in history)) - {"epoch"})
    logged = backend.logged_steps(keys[0]) if keys else None
    if logged is None:
        return
    for h in history:
        if h["epoch"] not in logged:
            backend.log_metrics({k: v for k, v in h.items() if k != "epoch"}, h["epoch"])


def seed_epoch(task, backend, epoch: int) -> None:
    seed_everything(task.cfg.runtime.seed + EPOCH_SEED * epoch + backend.rank)


def restore(task, backend, modules: dict, log=print) -> tuple[int, list, dict]:
    """(next epoch, history, result files) from the backend's latest checkpoint directory."""
    with backend.latest() as d:
        if d is None:
            return 0, [], {}
        d = Path(d)
        start, history = resume(d / STATE, kind=task.kind, cls=task.cls, arch=task.arch,
                                modules=modules,
                                config=flatten(task.cfg), map_location=backend.device)
        files = {p.name: p.read_bytes() for p in d.iterdir() if p.name != STATE}
    if backend.rank == 0:
        done = "finished; nothing to train" if start >= task.epochs else \
            f"resuming at epoch {start + 1}/{task.epochs}"
        log(f"{task.name}: checkpoint of epoch {start} found: {done}")
    return start, history, files


def write_checkpoint(d: str | os.PathLike, task, modules: dict, epoch: int, history: list,
                     files: dict[str, bytes]) -> None:
    """A checkpoint directory: ``state.pt`` and the result ``files``."""
    save_checkpoint(Path(d) / STATE, kind=task.kind, arch=task.arch, modules=modules,
                    config=to_dict(task.cfg), progress={"epoch": epoch, "history": history})
    for name, data in files.items():
        (Path(d) / name).write_bytes(data)


def collect(batches: Iterable, max_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather up to ``max_images`` evaluation images as float [0, 1] CPU tensors."""
    xs, ys, n = [], [], 0
    for xb, yb in batches:
        xs.append(xb)
        ys.append(yb)
        n += len(yb)
        if n >= max_images:
            break
    x = torch.cat(xs)[:max_images]
    return (x.float() / 255 if x.dtype == torch.uint8 else x), torch.cat(ys)[:max_images].long()


def ddp(module, backend):
    """``module`` DDP-wrapped over the backend's workers (itself for one worker)."""
    if backend.world == 1:
        return module
    ids = [backend.device.index] if backend.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def join(modules):
    """DDP's join: ranks that run out of batches first shadow the others' collectives (the
    stream gives workers uneven batch counts: every sample once per epoch)."""
    from torch.distributed.algorithms.join import Join

    wrapped = [m for m in modules if isinstance(m, torch.nn.parallel.DistributedDataParallel)]
    return Join(wrapped) if wrapped else contextlib.nullcontext()


def reduce(summary: dict, keys: tuple[str, ...], world: int) -> dict:
    """Per-worker epoch summaries -> global: image-weighted means of ``keys`` (named by the
    caller: a worker that got no batch has none), summed ``images`` and ``corrupt_samples``,
    images/s over the slowest worker, mean data-wait share."""
    n = float(summary["n"])
    vec = torch.tensor([summary.get(k, 0.0) * n for k in keys]
                       + [float(summary.get("corrupt_samples", 0)), n,
                          summary["data_wait_s"] / max(summary["seconds"], 1e-9)],
                       dtype=torch.float64)
    seconds = torch.tensor([summary["seconds"]], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(vec)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    total = float(vec[len(keys) + 1])
    out = {k: float(vec[i]) / max(total, 1.0) for i, k in enumerate(keys)}
    out.update(images=total, images_per_s=total / max(float(seconds), 1e-9),
               data_wait_share=float(vec[-1]) / world, corrupt_samples=int(vec[len(keys)]))
    return out
