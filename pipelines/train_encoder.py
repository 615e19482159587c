"""Train a standard or adversarially robust encoder on Ray Train.

    ray job submit -- python -m pipelines.train_encoder --config alexnet-imagenet-robust \\
        --set data.shards=s3://bucket/imagenet --storage-path s3://bucket/runs

Each worker feeds the data plane's stream to ``arinv.train.loop.train_epoch`` (the same
``standard_step`` / ``adversarial_step`` as the single-process loop), DDP-wrapped, with gradient
accumulation up to ``optim.batch_size``. Every epoch: metrics to MLflow (rank 0), a quick
clean + PGD check on held-out images, and a checkpoint through Ray Train. After the last epoch
rank 0 writes the full robustness report into the final checkpoint; the driver registers the
encoder in the MLflow model registry.
"""

from __future__ import annotations

import json
import sys

from arinv.config import EncoderTrainConfig, build, flatten

from pipelines.trainer import STATE, Launch, Worker, launch

REPORT = "report.json"


def encoder_loop(config: dict) -> None:
    from arinv.metrics.robustness import epoch_accuracies, robustness_report
    from arinv.models import create_encoder
    from arinv.train.loop import collect, train_epoch
    from arinv.train.runtime import autocast_for, prepare_model
    from arinv.train.steps import build_optimizer

    cfg = build(EncoderTrainConfig, config["cfg"])
    w = Worker(cfg, cfg.runtime.seed, config["progress"])
    w.seed_epoch(0)
    model = prepare_model(create_encoder(cfg.model.name, num_classes=cfg.model.num_classes),
                          w.device, cfg.runtime.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg.optim)
    modules = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    start, history, extras = w.restore(kind="encoder", arch=model.arch, modules=modules,
                                       config=flatten(cfg))
    if start >= cfg.optim.epochs and REPORT in extras:
        return  # a finished run relaunched: its last checkpoint holds everything
    micro, accumulate = cfg.scaling.accumulation(cfg.optim.batch_size)
    amp = autocast_for(w.device, cfg.runtime.amp)
    log = w.logger(config)
    val = None
    if w.chief:  # only rank 0 evaluates; the other ranks wait at the next report
        val = collect(w.batches("val", micro), max(cfg.eval.max_images, cfg.eval.epoch_images))
    net = w.ddp(model)
    ev = cfg.eval
    for epoch in range(start, cfg.optim.epochs):
        w.seed_epoch(epoch)
        with w.join(net):
            batches = w.train_batches(cfg, config, micro, epoch)
            m = train_epoch(net, optimizer, batches, cfg, w.device, accumulate=accumulate,
                            attack_model=model, progress=config["progress"] and w.chief,
                            desc=f"{cfg.name} epoch {epoch + 1}/{cfg.optim.epochs}")
        scheduler.step()
        keys = ("adv_loss", "adv_acc") if cfg.attack else ("loss", "acc")
        metrics = {"epoch": epoch + 1, **w.reduce(m, keys), "lr": optimizer.param_groups[0]["lr"]}
        files = {}
        if w.chief:
            if ev.every and ((epoch + 1) % ev.every == 0 or epoch + 1 == cfg.optim.epochs):
                x, y = val[0][:ev.epoch_images], val[1][:ev.epoch_images]
                metrics.update(epoch_accuracies(model, x, y, eps_list=ev.pgd_eps, norm=ev.norm,
                                                steps=ev.pgd_steps, batch_size=micro,
                                                autocast=amp))
            if epoch + 1 == cfg.optim.epochs:
                rep = robustness_report(model, val[0][:ev.max_images], val[1][:ev.max_images],
                                        eps_list=ev.pgd_eps, norm=ev.norm, steps=ev.pgd_steps,
                                        batch_size=micro, autocast=amp).as_dict()
                files[REPORT] = json.dumps(rep, indent=2).encode()
                metrics.update(final_clean_acc=rep["clean"],
                               **{f"final_pgd_acc_eps{float(e):g}": a
                                  for e, a in rep["pgd"].items()})
            log.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
        history.append(metrics)
        w.report(metrics, kind="encoder", arch=model.arch, modules=modules, cfg=cfg,
                 epoch=epoch + 1, history=history, files=files)
    if log is not None:
        log.close()


def train_encoder(cfg: EncoderTrainConfig, run: Launch) -> dict:
    """Fit on Ray Train, then (with ``run.register``) register the encoder; returns the
    robustness report, run id, final checkpoint path and registered version."""
    from arinv.models import create_encoder

    from pipelines import registry, tracking

    model = create_encoder(cfg.model.name, num_classes=cfg.model.num_classes)
    resolution = cfg.model.resolution or model.input_size
    out = launch(encoder_loop, cfg, run, kind="encoder", arch=model.arch, resolution=resolution,
                 augment=True)
    final = out["checkpoint_dir"]
    report = json.loads((final / REPORT).read_text())
    result = {"name": cfg.name, "run_id": out["run_id"], "tracking_uri": out["tracking_uri"],
              "checkpoint": str(final / STATE), "stored_checkpoint": out["stored_checkpoint"],
              "robustness": report, "config": flatten(cfg)}
    log = tracking.RunLogger(out["tracking_uri"], out["run_id"])
    log.log_artifact(final / REPORT)
    if run.register:
        alias = run.alias or ("robust" if cfg.attack else "standard")
        name = f"arinv-{cfg.model.name}"
        version = registry.register_encoder(out["tracking_uri"], out["run_id"], final / STATE,
                                            name=name, alias=alias)
        result["registered"] = f"models:/{name}@{alias}"
        result["version"] = int(version.version)
    log.close(status="FINISHED")
    (run.workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    from arinv.cli import main as cli_main

    return cli_main(["train-encoder", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

