"""Robustness to scale changes (Sec. A2.2, Table A2, Fig. A3) as one command
(``arinv eval-scale``).

Both autoencoders are fetched from the registry by URI and checked (an autoencoder, whose
generator inverts its encoder and returns an image of the encoder's resolution; both columns
at the same resolution) before any image is read. Then, on the evaluation images, for each L:
``arinv.downstream.scale`` upscales, reconstructs and compares, and this module writes

  WORKDIR/table_a2.md, table_a2.csv   Table A2's layout, the paper's values beside ours
  WORKDIR/fig_a3.png                  Fig. A3's layout: per example image, the upscaled inputs
                                      (L left to right), then each column's reconstructions
  WORKDIR/results.json

logged to a parent MLflow run (kind ``scale``) with a child run per column whose metrics
``psnr`` / ``ssim`` / ``lpips`` are logged at step L (MLflow draws them against L).
The evaluation runs in this process on one device (``--device``); it is cheap next to
training, and its memory is bounded by ``max_pixels`` (see ``arinv.downstream.scale``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from arinv.config import ConfigError, ScaleConfig, flatten, to_dict, validate
from arinv.experiments import table_a2
from pipelines.autoencoders import autoencoder_files, load_pair
from pipelines.console import log_file, say
from pipelines.errors import ModelNotFound, RegistryError
from pipelines.trainer import Launch

PURPOSE = "arinv eval-scale"


def fetch_columns(cfg: ScaleConfig, tracking_uri: str, cache: str | None
                  ) -> tuple[dict, list[str]]:
    """({column: (URI, encoder file, generator file)}, [why each missing one is missing]): a
    URI that names a model of another kind is refused here, naming it and what was expected."""
    found, missing = {}, []
    for column in table_a2.COLUMNS:
        uri = getattr(cfg, column)
        if uri is None:
            continue
        try:
            found[column] = (uri, *autoencoder_files(uri, tracking_uri, cache, purpose=PURPOSE))
        except ModelNotFound as e:
            missing.append(str(e).split("; ")[0])  # "<URI>: no alias ... (aliases: ...)"
    return found, missing


def load_columns(files: dict, device) -> dict:
    """column -> (encoder, generator, tap, resolution, URI) from ``fetch_columns``' files, each
    pair checked (its generator inverts its encoder and returns an image of the encoder's
    resolution) and both columns at one resolution, before any image is read."""
    out = {}
    for column, (uri, enc_file, gen_file) in files.items():
        try:
            encoder, generator, tap, r, _ = load_pair(enc_file, gen_file, device=device)
        except ValueError as e:  # ConfigError: a tap the generator does not invert
            raise RegistryError(f"{column}={uri}: {e}") from None
        out[column] = (encoder, generator, tap, r, uri)
    sizes = {c: v[3] for c, v in out.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"standard, robust: the two autoencoders work at different "
                          f"resolutions {sizes}; Table A2 compares both on the same upscaled "
                          "images, so pick a pair trained at one resolution")
    return out


def evaluation_images(cfg: ScaleConfig, workdir: Path, resolution: int, progress: bool):
    """The first ``cfg.images`` images of ``cfg.data`` as float [0, 1] (resized and
    centre-cropped to ``resolution``), and the shard set they came from."""
    from arinv.data.reader import (
        ShardBatches,
        has_manifest,
        image_folder_shards,
        join,
        write_sample_shards,
    )
    from arinv.train.run import collect

    if cfg.data is None:  # the quickstart's task: the bundled grayscale set
        from arinv.data.sample import GRAY_PHOTOS

        per_class = -(-cfg.images // len(GRAY_PHOTOS))
        split = str(write_sample_shards(workdir / "shards" / f"sample-gray-1-{per_class}", 1,
                                        per_class, progress=progress, name="sample-gray")
                    / "val")
    elif has_manifest(cfg.data):
        split = cfg.data
    elif has_manifest(join(cfg.data, "val")):
        split = join(cfg.data, "val")
    else:
        split, _ = image_folder_shards(cfg.data, workdir, progress=progress)
    x, _ = collect(ShardBatches(split, 64, resolution=resolution, train=False), cfg.images)
    return x, split


def run_scale(cfg: ScaleConfig, run: Launch) -> dict:
    from arinv.downstream.scale import figure, scale_table
    from arinv.metrics.image import lpips_available
    from arinv.train.runtime import resolve_device
    from arinv.viz import save_grid
    from pipelines import tracking
    from pipelines.quickstart import train_missing_pair

    validate(cfg)
    uri = run.tracking()
    device = resolve_device(cfg.device)
    files, missing = fetch_columns(cfg, uri, run.model_cache)
    if missing:
        train_missing_pair(missing, run, uri, allowed=cfg.train_missing, kind="autoencoder",
                           registers="arinv-alexnet_small-conv5-autoencoder@standard and "
                           "@robust")
        files, _ = fetch_columns(cfg, uri, run.model_cache)
    columns = load_columns(files, device)
    resolution = next(iter(columns.values()))[3]
    images, split = evaluation_images(cfg, run.workdir, resolution, run.progress)
    with_lpips = lpips_available()
    run.workdir.mkdir(parents=True, exist_ok=True)

    parent = tracking.find_or_create_run(uri, run.experiment, run.run_key(cfg.name),
                                         run_name=cfg.name, tags={"arinv.kind": "scale"})
    log = tracking.RunLogger(uri, parent)
    log.log_params({**flatten(cfg), "images_used": images.shape[0], "data_split": split,
                    "resolution": resolution, "device": str(device),
                    "lpips": "on" if with_lpips else "n/a (weights not installed)"})
    children = {}
    for column, (_, _, tap, _, model_uri) in columns.items():
        rid = tracking.find_or_create_run(
            uri, run.experiment, f"{run.run_key(cfg.name)}/{column}",
            run_name=f"{cfg.name}-{column}",
            tags={tracking.PARENT_TAG: parent, "arinv.kind": "scale-column",
                  "arinv.model": model_uri})
        children[column] = tracking.RunLogger(uri, rid)
        children[column].log_params({"model": model_uri, "tap": tap})
    say(f"== Table A2 {cfg.name}: {images.shape[0]} images of {split} at {resolution} px, "
          f"L in {cfg.factors}, columns {list(columns)} on {device}; MLflow run {parent}")

    t0 = time.perf_counter()
    bar = _bar(len(cfg.factors), run.progress)

    def on_factor(L: int, means: dict) -> None:
        for column, m in means.items():
            children[column].log_metrics({k: v for k, v in m.items() if math.isfinite(v)}, L)
        bar.set_postfix_str(" ".join(f"{c} {m['psnr']:.2f} dB" for c, m in means.items()))
        bar.update(1)

    try:
        result = scale_table({c: (v[0], v[1], v[2]) for c, v in columns.items()}, images,
                             resolution, factors=sorted(cfg.factors), max_pixels=cfg.max_pixels,
                             with_lpips=with_lpips, examples=cfg.examples, tile=cfg.tile,
                             on_factor=on_factor)
    except BaseException as e:
        bar.close()
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        for c in children.values():
            c.close(status=status, timeout=30)
        log.close(status=status, timeout=30)
        raise
    bar.close()
    seconds = time.perf_counter() - t0
    rows = table_a2.means(result["metrics"])
    md, csv_text = table_a2.table(rows, resolution)
    files = [run.workdir / "table_a2.md", run.workdir / "table_a2.csv",
             run.workdir / "fig_a3.png", run.workdir / "results.json"]
    files[0].write_text(f"# Table A2 ({cfg.name}): reconstructing upscaled images\n\n"
                        f"{images.shape[0]} images of {split}, {resolution} px, upscaled by L "
                        f"(bicubic) and reconstructed from the full-size encoding.\n\n{md}")
    files[1].write_text(csv_text)
    save_grid(files[2], figure(result["examples"], list(columns)))
    out = {"name": cfg.name, "run_id": parent, "tracking_uri": uri, "resolution": resolution,
           "images": images.shape[0], "data": split, "seconds": seconds,
           "models": {c: v[4] for c, v in columns.items()},
           "rows": {c: {str(L): {k: None if math.isnan(x) else x for k, x in v.items()}
                        for L, v in by_l.items()} for c, by_l in rows.items()},
           "config": to_dict(cfg), "workdir": str(run.workdir),
           "files": [str(f) for f in files]}
    files[3].write_text(json.dumps(out, indent=2, default=str))
    for f in files:
        log.log_artifact(f)
    log.log_metrics({"seconds": seconds}, step=0)
    ok = all(c.close(status="FINISHED") for c in children.values())
    ok = log.close(status="FINISHED") and ok
    if not ok:
        say(f"warning: some MLflow logging to {uri} did not go through (see "
            f"{log_file() or 'the output above'})")
    return out


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Table A2", unit="L", disable=not progress, leave=True)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["eval-scale", *(argv or [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
