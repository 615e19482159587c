"""Train a generator that inverts a frozen encoder's features, on Ray Train.

    ray job submit -- python -m pipelines.train_generator --config alexnet-conv5-gan \\
        --set encoder.checkpoint=models:/arinv-alexnet@robust --storage-path s3://bucket/runs

The workers run the one training loop (``arinv.train.run.fit``) on ``GeneratorTask`` through
the Ray backend (``pipelines.trainer``): ``gan_step``, generator and discriminator
DDP-wrapped; every ``eval.every`` epochs rank 0 logs PSNR / SSIM (/ LPIPS when its weights
are installed) on held-out images and an image grid; after the last epoch it adds the RI
baseline. The driver registers the pair as an MLflow pyfunc "autoencoder" (images in,
reconstructions and features out).

A ``DenoiserTrainConfig`` (a preset with ``noise:``, e.g. ``tiny-sample-denoiser``) trains the
wavelet denoising autoencoder the same way (``DenoiserTask``: ``denoise_step``, held-out PSNR /
SSIM of the denoised and the noisy images) and registers it as a pyfunc "denoiser"
(``arinv-<encoder>-denoiser``; noisy images in, denoised out); ``arinv train-denoiser``.
"""

from __future__ import annotations

import json
import sys

from arinv.checkpoint import STATE
from arinv.config import ConfigError, DenoiserTrainConfig, GeneratorTrainConfig, flatten
from arinv.train.tasks import GRID, QUALITY, DenoiserTask, GeneratorTask
from pipelines.trainer import Launch, launch


def train_generator(cfg: GeneratorTrainConfig | DenoiserTrainConfig, run: Launch, *,
                    model_name: str | None = None) -> dict:
    """Fit on Ray Train, then (with ``run.register``) register the encoder + generator pair as
    a pyfunc autoencoder named ``model_name`` (default arinv-<encoder>-<tap>-autoencoder; a
    denoiser: arinv-<encoder>-denoiser); returns quality metrics, run id, checkpoint and
    registered URI."""
    from pipelines import registry, tracking

    if cfg.encoder.checkpoint is None:
        raise ConfigError("encoder.checkpoint: null; a pipeline run inverts a trained encoder: "
                          "set it to a checkpoint file or a registry URI such as "
                          "models:/arinv-alexnet@robust")
    # an unknown registry URI fails here, before Ray starts
    enc_file = registry.encoder_file(cfg, run.tracking(), run.model_cache)
    denoiser = isinstance(cfg, DenoiserTrainConfig)
    task = (DenoiserTask if denoiser else GeneratorTask)(cfg, encoder_checkpoint=enc_file)
    out = launch(task, run)
    final = out["checkpoint_dir"]
    quality = json.loads((final / QUALITY).read_text())
    result = {"name": cfg.name, "run_id": out["run_id"], "tracking_uri": out["tracking_uri"],
              "checkpoint": str(final / STATE), "stored_checkpoint": out["stored_checkpoint"],
              "grid": str(final / GRID), "quality": quality, "config": flatten(cfg)}
    log = tracking.RunLogger(out["tracking_uri"], out["run_id"])
    log.log_artifact(final / QUALITY)
    log.log_artifact(final / GRID)
    if run.register:
        alias = run.alias or _encoder_alias(cfg.encoder.checkpoint)
        if denoiser:
            name = model_name or f"arinv-{cfg.encoder.name}-denoiser"
            version = registry.register_denoiser(out["tracking_uri"], out["run_id"],
                                                 final / STATE, name=name, alias=alias)
        else:
            name = model_name or f"arinv-{cfg.encoder.name}-{cfg.encoder.layer}-autoencoder"
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
    from pipelines.cli import main as cli_main

    return cli_main(["train-generator", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
