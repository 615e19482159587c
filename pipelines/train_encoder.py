"""Train a standard or adversarially robust encoder on Ray Train.

    ray job submit -- python -m pipelines.train_encoder --config alexnet-imagenet-robust \\
        --set data.shards=s3://bucket/imagenet --storage-path s3://bucket/runs

The workers run the one training loop (``arinv.train.run.fit``) on ``EncoderTask`` through the
Ray backend (``pipelines.trainer``): DDP, gradient accumulation up to ``optim.batch_size``,
per-epoch metrics to MLflow (rank 0), clean + PGD checks on held-out images every
``eval.every`` epochs, a checkpoint per epoch, the full robustness report after the last. The
driver then registers the encoder in the MLflow model registry.
"""

from __future__ import annotations

import json
import sys

from arinv.checkpoint import STATE
from arinv.config import EncoderTrainConfig, flatten
from arinv.train.tasks import REPORT, EncoderTask
from pipelines.trainer import Launch, launch


def train_encoder(cfg: EncoderTrainConfig, run: Launch) -> dict:
    """Fit on Ray Train, then (with ``run.register``) register the encoder; returns the
    robustness report, run id, final checkpoint path and registered version."""
    from pipelines import registry, tracking

    out = launch(EncoderTask(cfg), run)
    final = out["checkpoint_dir"]
    report = json.loads((final / REPORT).read_text())
    result = {"name": cfg.name, "run_id": out["run_id"], "tracking_uri": out["tracking_uri"],
              "checkpoint": str(final / STATE), "stored_checkpoint": out["stored_checkpoint"],
              "robustness": report, "config": flatten(cfg)}
    log = tracking.RunLogger(out["tracking_uri"], out["run_id"])
    log.log_artifact(final / REPORT)
    if run.register:
        alias = run.alias or ("robust" if cfg.attack else "standard")
        name = f"arinv-{cfg.encoder.name}"
        version = registry.register_encoder(out["tracking_uri"], out["run_id"], final / STATE,
                                            name=name, alias=alias)
        result["registered"] = f"models:/{name}@{alias}"
        result["version"] = int(version.version)
    log.close(status="FINISHED")
    (run.workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["train-encoder", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
