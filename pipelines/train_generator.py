"""Train a generator that inverts a frozen encoder's features, on Ray Train.

    ray job submit -- python -m pipelines.train_generator --config alexnet-conv5-gan \\
        --set encoder.checkpoint=models:/arinv-alexnet@robust --storage-path s3://bucket/runs

Each worker feeds the data plane's stream to ``arinv.train.generator_loop.train_generator_epoch``
(``gan_step``, unchanged), generator and discriminator DDP-wrapped. Every epoch rank 0 logs
losses, PSNR / SSIM (/ LPIPS when its weights are installed) on held-out images and an image
grid; after the last epoch it adds the RI baseline. The driver registers the pair as an MLflow
pyfunc "autoencoder" (images in, reconstructions and features out).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from arinv.config import ConfigError, GeneratorTrainConfig, build, flatten

from pipelines.trainer import STATE, Launch, Worker, launch

QUALITY, GRID = "quality.json", "reconstructions.png"


def encoder_file(cfg: GeneratorTrainConfig, tracking_uri: str, cache: str | None) -> str | None:
    """A local path for ``encoder.checkpoint``: a registry URI is fetched into ``cache``, an
    ``s3://`` checkpoint (another run's stored state) copied there once."""
    ref = cfg.encoder.checkpoint
    if ref and ref.startswith(("models:/", "runs:/")):
        from pipelines.registry import fetch_checkpoint

        return str(fetch_checkpoint(ref, tracking_uri, cache_dir=cache))
    if ref and ref.startswith("s3://"):
        from pipelines.trainer import stored_file

        return str(stored_file(ref, cache))
    return ref


def generator_loop(config: dict) -> None:
    from arinv.train.generator_loop import (build_inverter, build_training_state,
                                            evaluate_generator, frozen_encoder,
                                            train_generator_epoch)
    from arinv.train.loop import collect

    cfg = build(GeneratorTrainConfig, config["cfg"])
    w = Worker(cfg, cfg.runtime.seed, config["progress"])
    w.seed_epoch(0)
    enc = frozen_encoder(cfg, w.device, checkpoint=encoder_file(cfg, config["tracking_uri"],
                                                             config["model_cache"]))
    o = cfg.optim
    g, d, arch = build_inverter(cfg, enc, w.device)
    opt_g, opt_d, scheds, modules = build_training_state(cfg, g, d)
    start, history, extras = w.restore(kind="generator", arch=arch, modules=modules,
                                       config=flatten(cfg))
    if start >= o.epochs and QUALITY in extras:
        return
    micro, _ = cfg.scaling.accumulation(o.batch_size)
    log = w.logger(config)
    val = [collect(w.batches("val", micro), cfg.eval_images)] if w.chief else None
    g_net, d_net = w.ddp(g), (w.ddp(d) if d is not None else None)
    per_epoch = dataclasses.replace(cfg, ri_steps=0)
    for epoch in range(start, o.epochs):
        w.seed_epoch(epoch)
        with w.join(g_net, d_net):
            batches = w.train_batches(cfg, config, micro, epoch)
            m = train_generator_epoch(g_net, enc, batches, cfg, w.device,
                                      opt_g=opt_g, discriminator=d_net, opt_d=opt_d,
                                      progress=config["progress"] and w.chief,
                                      desc=f"{cfg.name} epoch {epoch + 1}/{o.epochs}")
        for s in scheds:
            s.step()
        keys = ("loss_g", "pix", "feat", "gan") + (("loss_d", "d_real", "d_fake") if d else ())
        metrics = {"epoch": epoch + 1, **w.reduce(m, keys)}
        files = {}
        last = epoch + 1 == o.epochs
        if w.chief and (last or (epoch + 1) % cfg.eval_every == 0):
            with tempfile.TemporaryDirectory() as tmp:
                grid = Path(tmp) / GRID
                q = evaluate_generator(g, enc, val, cfg if last else per_epoch, w.device, grid)
                log.log_artifact(grid, f"grids/epoch_{epoch + 1:04d}")
                if last:
                    files = {QUALITY: json.dumps(q, indent=2).encode(), GRID: grid.read_bytes()}
            metrics.update({f"val_{k}": v for k, v in q.items() if isinstance(v, float)})
            if last and "ri_baseline" in q:
                metrics.update({f"ri_{k}": v for k, v in q["ri_baseline"].items()
                                if isinstance(v, float)})
        if w.chief:
            log.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        history.append(metrics)
        w.report(metrics, kind="generator", arch=arch, modules=modules, cfg=cfg,
                 epoch=epoch + 1, history=history, files=files)
    if log is not None:
        log.close()


def train_generator(cfg: GeneratorTrainConfig, run: Launch) -> dict:
    """Fit on Ray Train, then (with ``run.register``) register the encoder + generator pair as
    a pyfunc autoencoder; returns quality metrics, run id, checkpoint and registered URI."""
    from arinv.train.generator_loop import build_inverter
    from arinv.train.loop import load_encoder

    from pipelines import registry, tracking

    if cfg.encoder.checkpoint is None:
        raise ConfigError("encoder.checkpoint: null; a pipeline run inverts a trained encoder: "
                          "set it to a checkpoint file or a registry URI such as "
                          "models:/arinv-alexnet@robust")
    if cfg.scaling.accumulation(cfg.optim.batch_size)[1] > 1:
        raise ConfigError("scaling.micro_batch_size: gradient accumulation is implemented for "
                          "encoder training only; for a generator set it to optim.batch_size / "
                          "scaling.num_workers (or null)")
    # an unknown registry URI fails here, before Ray starts
    enc_file = encoder_file(cfg, run.tracking(), run.model_cache)
    enc, _ = load_encoder(enc_file)
    _, _, arch = build_inverter(cfg, enc)
    out = launch(generator_loop, cfg, run, kind="generator", arch=arch,
                 resolution=cfg.resolution or enc.input_size, augment=cfg.augment)
    final = out["checkpoint_dir"]
    quality = json.loads((final / QUALITY).read_text())
    result = {"name": cfg.name, "run_id": out["run_id"], "tracking_uri": out["tracking_uri"],
              "checkpoint": str(final / STATE), "stored_checkpoint": out["stored_checkpoint"],
              "grid": str(final / GRID),
              "quality": quality, "config": flatten(cfg)}
    log = tracking.RunLogger(out["tracking_uri"], out["run_id"])
    log.log_artifact(final / QUALITY)
    log.log_artifact(final / GRID)
    if run.register:
        alias = run.alias or _encoder_alias(cfg.encoder.checkpoint)
        name = f"arinv-{cfg.encoder.name}-{cfg.encoder.layer}-autoencoder"
        version = registry.register_autoencoder(
            out["tracking_uri"], out["run_id"], encoder_checkpoint=enc_file,
            generator_checkpoint=final / STATE, name=name, alias=alias)
        result["registered"] = f"models:/{name}@{alias}"
        result["version"] = int(version.version)
    log.close(status="FINISHED")
    (run.workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _encoder_alias(ref: str) -> str:
    """The encoder's registry alias ("robust" for models:/arinv-alexnet@robust), else "latest"."""
    return ref.rsplit("@", 1)[1] if ref.startswith("models:/") and "@" in ref else "latest"


def main(argv: list[str] | None = None) -> int:
    from arinv.cli import main as cli_main

    return cli_main(["train-generator", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
