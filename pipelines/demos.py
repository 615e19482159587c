"""``arinv demo style`` / ``arinv demo denoise``: the paper's two image-synthesis applications
(Sec. A3) at toy size, from training to pictures, on the quickstart's models.

Both work in the quickstart's folder (``DIR``, default ./arinv-quickstart): the small standard
and robust encoders (and, for style transfer, their conv5 autoencoders) come from its registry,
``DIR/mlflow.db``; when they are not there the quickstart runs first. What they train learns
from the bundled colour photographs (``DIR/shards-colour``): the quickstart's own task is
grayscale, and these applications are about colour images.

- style: trains the conv2 and conv1 generators (``tiny-sample-style-conv2`` / ``-conv1``) for
  each encoder on Ray Train and registers them (``arinv-alexnet_small-conv2-autoencoder@standard``
  ...), then stylizes held-out parts of the bundled photographs with other images' styles
  through conv5 -> conv2 -> conv1, with the standard and with the robust autoencoders:
  ``DIR/style/style.png`` (rows: content, style, standard, robust) and each output image.
- denoise: trains the wavelet denoiser (``tiny-sample-denoiser``) over each encoder and
  registers it (``arinv-alexnet_small-denoiser@standard`` / ``@robust``), then adds seeded noise
  (sigma 50/255, clipped) to the held-out part of every bundled photograph and tabulates PSNR /
  SSIM of the noisy input, both denoisers and non-local means: ``DIR/denoise/denoise_eval.md``
  and a grid.

Each logs its outputs to an MLflow run (``arinv.kind`` ``style-demo`` / ``denoise-demo``) in the
quickstart's experiment. Relaunching reuses finished trainings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from arinv.config import DenoiserTrainConfig, GeneratorTrainConfig, load_config
from arinv.data.reader import write_sample_shards
from pipelines.console import log_file, say
from pipelines.quickstart import ENCODERS, EXPERIMENT, run_quickstart
from pipelines.trainer import Launch, own_local_ray

ENCODER = "alexnet_small"
KINDS = tuple(ENCODERS)  # standard, robust
STYLE_PRESETS = ("tiny-sample-style-conv2", "tiny-sample-style-conv1")
DENOISER_PRESET = "tiny-sample-denoiser"
LEVELS = ("conv5", "conv2", "conv1")
# content: the held-out part of a photograph the encoders saw (training used the left 70%);
# style: an image the encoders never saw, or another photograph's held-out part
STYLE_PAIRS = (("chelsea", "retina"), ("coffee", "colorwheel"),
               ("astronaut", "immunohistochemistry"))
COLOUR_SHARDS = "shards-colour"  # under DIR: the bundled colour set the demos train on
CONTENT_SIDE = 128  # the shorter side of a content image, aspect ratio kept
STYLE_SIDE = 160


def held_out(name: str, side: int):
    """The held-out part (right 30%) of bundled photograph ``name`` (or the whole of another
    colour image ``load_photo`` finds), its shorter side resized to ``side``: a float
    3 x H x W tensor."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from arinv.data.sample import PHOTOS, held_out_part, load_photo

    photo = held_out_part(name) if name in PHOTOS else load_photo(name)
    # np.array copies: cached photographs are read-only
    x = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float()[None] / 255
    scale = side / min(x.shape[2:])
    size = [max(side, round(s * scale)) for s in x.shape[2:]]
    return F.interpolate(x, size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def run_demo(app: str, workdir: Path, *, overrides: list[str] = (), progress: bool = True,
             verbose: bool = False, address: str | None = None,
             tracking_uri: str | None = None) -> dict:
    """Train what ``app`` ("style" or "denoise") needs over the quickstart's encoders, then
    apply it; returns its result (paths, timings, the denoising table's values)."""
    from pipelines.tracking import checked_uri

    workdir = Path(workdir).expanduser().resolve()
    if tracking_uri:
        checked_uri(tracking_uri)
    uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    configs = _configs(app, workdir, list(overrides))  # every config checked before any work
    t0 = time.perf_counter()
    with own_local_ray():
        missing = _missing(app, uri)
        if missing:
            say(f"== {'; '.join(missing)}: running the quickstart first (in {workdir})")
            run_quickstart(workdir, progress=progress, verbose=verbose, address=address,
                           tracking_uri=uri)
        d = configs[0].data  # the colour photographs: the quickstart's own set is grayscale
        write_sample_shards(Path(d.shards), d.train_per_class, d.val_per_class,
                            progress=progress and verbose, name=d.source)
        trained = {}
        for cfg in configs:
            say(f"== training {cfg.name} over {cfg.encoder.checkpoint} ({cfg.encoder.layer}, "
                f"{cfg.optim.epochs} epochs)")
            from pipelines.train_generator import train_generator

            start = time.perf_counter()
            r = train_generator(cfg, Launch(
                workdir=workdir / "generators" / cfg.name, storage_path=str(workdir / "ray"),
                tracking_uri=uri, experiment=EXPERIMENT, address=address, progress=progress,
                verbose=verbose, model_cache=str(workdir / "model-cache")))
            trained[cfg.name] = {"registered": r["registered"], "quality": r["quality"],
                                 "seconds": time.perf_counter() - start}
            say(f"   registered {r['registered']}")
    train_s = time.perf_counter() - t0
    result = (_style if app == "style" else _denoise)(workdir / app, uri)
    result.update(trained=trained, train_seconds=train_s,
                  seconds=time.perf_counter() - t0)
    (workdir / app / "result.json").write_text(json.dumps(result, indent=2, default=str))
    say(f"\n{app} demo: {result['seconds'] / 60:.1f} min ({train_s / 60:.1f} training)")
    for line in result["lines"]:
        say(line)
    if log_file():
        say(f"log:        {log_file()}")
    say(f"MLflow UI:  mlflow ui --backend-store-uri {uri}")
    return result


def _configs(app: str, workdir: Path, overrides: list[str]) -> list:
    shards = f"data.shards={workdir / COLOUR_SHARDS}"
    if app == "style":
        return [load_config(GeneratorTrainConfig, p, [
            shards, f"name={p}-{k}", f"encoder.checkpoint=models:/arinv-{ENCODER}@{k}",
            *overrides]) for p in STYLE_PRESETS for k in KINDS]
    return [load_config(DenoiserTrainConfig, DENOISER_PRESET, [
        shards, f"name={DENOISER_PRESET}-{k}", f"encoder.checkpoint=models:/arinv-{ENCODER}@{k}",
        *overrides]) for k in KINDS]


def _missing(app: str, uri: str) -> list[str]:
    """Why the quickstart's models ``app`` builds on are not in the registry (none: [])."""
    import mlflow
    from mlflow.exceptions import MlflowException

    names = [f"arinv-{ENCODER}"] + ([f"arinv-{ENCODER}-conv5-autoencoder"] if app == "style"
                                    else [])
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    missing = []
    for name in names:
        for kind in KINDS:
            try:
                client.get_model_version_by_alias(name, kind)
            except MlflowException:
                missing.append(f"models:/{name}@{kind} is not registered")
    return missing


def _style(out: Path, uri: str) -> dict:
    import torch

    from arinv.downstream import stylize
    from pipelines.cli_style import load_levels, model_refs
    from pipelines.image_files import labelled_grid, write_png

    contents = [held_out(c, CONTENT_SIDE) for c, _ in STYLE_PAIRS]
    styles = [held_out(s, STYLE_SIDE) for _, s in STYLE_PAIRS]
    shown = [[c, s] for c, s in zip(contents, styles)]
    start = time.perf_counter()
    for kind in KINDS:
        pairs = load_levels(model_refs(kind, list(LEVELS), ENCODER), list(LEVELS), uri, "cpu")
        for i, ((c, s), x) in enumerate(zip(STYLE_PAIRS, contents)):
            with torch.no_grad():
                y = stylize(x[None], [styles[i]], pairs, levels=list(LEVELS))[0]
            write_png(y, out / kind / f"{c}_{s}.png")
            shown[i].append(y)
    seconds = time.perf_counter() - start
    grid = labelled_grid(shown, ["content", "style", *KINDS], out / "style.png")
    _log(uri, "style-demo", out, [grid])
    return {"grid": str(grid), "stylize_seconds": seconds,
            "lines": [f"stylized {len(contents)} images x {len(KINDS)} model sets "
                      f"(conv5 -> conv2 -> conv1) in {seconds:.1f} s",
                      f"grid:       {grid} (rows: content, style, {', '.join(KINDS)})",
                      f"images:     {out / KINDS[0]}/, {out / KINDS[1]}/"]}


def _denoise(out: Path, uri: str) -> dict:
    from arinv.data.sample import PHOTOS
    from pipelines.cli_denoise import compare, load_model, track

    refs = {k: f"models:/arinv-{ENCODER}-denoiser@{k}" for k in KINDS}
    models = {f"{k} ({ref})": load_model(ref, uri, "cpu")[0] for k, ref in refs.items()}
    clean = [held_out(p, CONTENT_SIDE) for p in PHOTOS]
    start = time.perf_counter()
    table = compare(clean, models, out)
    seconds = time.perf_counter() - start
    values = table["values"]["methods"]
    std, rob = (values[f"{k} ({refs[k]})"] for k in KINDS)
    verdict = (f"robust - standard denoiser: PSNR {rob['psnr'] - std['psnr']:+.2f} dB, SSIM "
               f"{rob['ssim'] - std['ssim']:+.4f} (noisy input: PSNR "
               f"{values['noisy input']['psnr']:.2f} dB)")
    track(uri, EXPERIMENT, "denoise-demo", table, {"images": len(clean), "sigma": 50},
          run_key=f"{out}/denoise-demo")
    return {"table": table["values"], "verdict": verdict, "eval_seconds": seconds,
            "lines": [table["md"], verdict, f"table:      {table['files'][0]}",
                      f"grid:       {table['files'][2]} (rows: clean, "
                      f"{', '.join(n.split(' (')[0] for n in values)})"]}


def _log(uri: str, kind: str, out: Path, files: list) -> None:
    from pipelines.tracking import RunLogger, find_or_create_run

    run_id = find_or_create_run(uri, EXPERIMENT, f"{out}/{kind}", run_name=kind,
                                tags={"arinv.kind": kind})
    log = RunLogger(uri, run_id)
    for f in files:
        log.log_artifact(f)
    for f in sorted(out.glob("*/*.png")):
        log.log_artifact(f, f.parent.name)
    log.close(status="FINISHED")
