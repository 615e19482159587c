"""A plain single-process encoder training loop (no Ray): the same step functions the Ray
Train pipeline feeds, with per-epoch checkpoints that an interrupted run resumes from."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from arinv.config import ConfigError, EncoderTrainConfig, flatten, to_dict
from arinv.data.local import local_loaders
from arinv.metrics.robustness import RobustnessReport, robustness_report
from arinv.models import create_encoder

from .runtime import EpochMeter, autocast_for, prepare_batch, prepare_model, resolve_device, seed_everything
from .state import load_checkpoint, read_checkpoint, resume, save_checkpoint
from .steps import adversarial_step, build_optimizer, standard_step

def train_epoch(model, optimizer, batches: Iterable, cfg: EncoderTrainConfig, device, *,
                desc: str = "train", progress: bool = True, accumulate: int = 1,
                attack_model=None) -> dict[str, float]:
    """One pass over ``batches`` with the step functions. ``accumulate`` micro-batches make one
    optimiser step (a DDP ``model`` syncs gradients on the last one only; a trailing partial
    group is dropped, like drop_last). Returns per-image means plus ``n``, ``seconds``,
    ``data_wait_s`` (time spent waiting for the next batch) and ``images_per_s``."""
    amp = autocast_for(device, cfg.runtime.amp)
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)
    meter = EpochMeter(batches)
    bar = tqdm(meter, desc=desc, leave=False, disable=not progress, unit="batch")
    for i, (xb, yb) in enumerate(bar, 1):
        x, y = prepare_batch(xb, yb, device, cfg.runtime.channels_last)
        update = i % accumulate == 0
        kw = dict(autocast=amp, loss_scale=1.0 / accumulate, update=update)
        with contextlib.nullcontext() if update else no_sync():
            if cfg.attack is None:
                out = standard_step(model, optimizer, x, y, **kw)
            else:
                out = adversarial_step(model, optimizer, x, y, cfg.attack,
                                       attack_model=attack_model, **kw)
        bar.set_postfix({k: f"{v:.3f}" for k, v in meter.add(out, len(y)).items()})
    optimizer.zero_grad(set_to_none=True)  # a trailing partial accumulation group
    return meter.summary()


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


def fit_encoder(cfg: EncoderTrainConfig, workdir: str | Path, *, progress: bool = True,
                log=print) -> dict:
    """Train (resuming from ``workdir/checkpoints/last.pt`` if present), then evaluate.

    Writes ``workdir/metrics.json`` and returns the same dict.
    """
    workdir = Path(workdir)
    device = resolve_device(cfg.runtime.device)
    seed_everything(cfg.runtime.seed)
    model = create_encoder(cfg.model.name, num_classes=cfg.model.num_classes)
    resolution = cfg.model.resolution or model.input_size
    train, val, classes = local_loaders(cfg.data, resolution, cfg.optim.batch_size, cfg.runtime.seed)
    if len(classes) != cfg.model.num_classes:
        raise ConfigError(f"model.num_classes: is {cfg.model.num_classes} but data.source "
                          f"{cfg.data.source!r} has {len(classes)} classes; set model.num_classes="
                          f"{len(classes)}")
    model = prepare_model(model, device, cfg.runtime.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    ckpt = workdir / "checkpoints" / "last.pt"
    flat = flatten(cfg)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start, history = resume(ckpt, kind="encoder", arch=model.arch, modules=modules, config=flat,
                            map_location=device)
    if start:
        log(f"resuming {cfg.name} from {ckpt} at epoch {start}/{cfg.optim.epochs}")
    for epoch in range(start, cfg.optim.epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        metrics = train_epoch(model, optimizer, train, cfg, device, progress=progress,
                              desc=f"{cfg.name} epoch {epoch + 1}/{cfg.optim.epochs}")
        scheduler.step()
        history.append({"epoch": epoch + 1, **metrics})
        save_checkpoint(ckpt, kind="encoder", arch=model.arch, modules=modules, config=to_dict(cfg),
                        progress={"epoch": epoch + 1, "history": history})
    report = evaluate_encoder(model, val, cfg, device)
    result = {"name": cfg.name, "config": flat, "classes": classes, "history": history,
              "robustness": report.as_dict(), "checkpoint": str(ckpt)}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def evaluate_encoder(model, batches, cfg: EncoderTrainConfig, device) -> RobustnessReport:
    x, y = collect(batches, cfg.eval.max_images)
    return robustness_report(model, x, y, eps_list=cfg.eval.pgd_eps, norm=cfg.eval.norm,
                             steps=cfg.eval.pgd_steps, batch_size=cfg.optim.batch_size,
                             autocast=autocast_for(device, cfg.runtime.amp))


def load_encoder(path: str | Path, device="cpu") -> tuple[torch.nn.Module, EncoderTrainConfig]:
    """Rebuild the encoder saved by ``fit_encoder`` (weights only; eval mode) and its config."""
    from arinv.config import build

    payload = read_checkpoint(path, "encoder")
    arch = dict(payload["arch"])
    model = create_encoder(arch.pop("name"), **arch)
    load_checkpoint(path, kind="encoder", arch=model.arch, modules={"model": model},
                    restore_rng=False)
    return model.to(device).eval(), build(EncoderTrainConfig, payload["config"])
