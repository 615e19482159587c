"""``arinv train-denoiser``, ``arinv denoise`` and ``arinv denoise eval``: the wavelet denoising
autoencoder (Sec. A3.2, A4.3); registered by ``pipelines.cli``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DENOISE_DESCRIPTION = """Image denoising with the wavelet-pooling autoencoder (paper Sec. A3.2,
A4.3; Tables A8 / A9): an AlexNet's convolutions (frozen) with Haar wavelet pooling, the detail
bands skipped to a decoder that unpools with the Haar synthesis. Images of any size (padded and
cropped back), files or folders; grayscale images are refused unless --gray-to-rgb.

  arinv denoise --in I --out O [--model REF]
      denoise a file (OUT a file) or a folder (OUT a folder of PNGs).
  arinv denoise eval --clean DIR [--sigma 50] [--unclipped] [--standard REF] [--robust REF]
      add white Gaussian noise (sigma on the 0-255 scale; clipped to [0, 1] unless
      --unclipped; seeded per image) to every clean image and report PSNR / SSIM of the noisy
      input, each denoiser and scikit-image's non-local means (a classical baseline with the
      true sigma) in one table; writes denoise_eval.md / .csv and a grid to --workdir and logs
      them to MLflow.

REF: a registry URI of a denoiser (models:/arinv-alexnet-denoiser@robust, as 'arinv
train-denoiser' registers it), an alias (robust, standard: arinv-<--encoder>-denoiser@ALIAS) or
a denoiser checkpoint file.

examples:
  arinv train-denoiser --config tiny-sample-denoiser \\
      --set encoder.checkpoint=models:/arinv-alexnet_small@robust          # toy, CPU
  arinv denoise --in noisy.png --out clean.png --model robust --encoder alexnet_small
  arinv denoise eval --clean photos/ --standard standard --robust robust --encoder alexnet_small
"""


def add_denoise_parsers(sub, add_launch_arguments, train_description: str) -> None:
    t = sub.add_parser("train-denoiser", help="train the wavelet denoising autoencoder (Tables "
                       "A8/A9) over a trained AlexNet encoder on Ray Train, and register it",
                       description=train_description)
    t.add_argument("--config", required=True, help="preset name or YAML path (a denoiser "
                   "preset: tiny-sample-denoiser, alexnet-denoiser)")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="e.g. --set encoder.checkpoint=models:/arinv-alexnet_small@robust")
    add_launch_arguments(t)

    d = sub.add_parser("denoise", help="denoise images of any size with a registered wavelet "
                       "denoiser; 'denoise eval' compares denoisers on clean images",
                       description=DENOISE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(d)
    d.add_argument("--in", dest="inputs", metavar="I", help="an image file or a folder")
    d.add_argument("--out", metavar="O", help="output file (one input) or folder")
    d.add_argument("--model", default="robust", metavar="REF",
                   help="registry URI, alias (default robust) or checkpoint file")
    dsub = d.add_subparsers(dest="denoise_command", metavar="eval")
    e = dsub.add_parser("eval", help="PSNR / SSIM of noisy, denoised and classical-baseline "
                        "images against clean ones", description=DENOISE_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(e)
    e.add_argument("--clean", required=True, metavar="DIR", help="clean images (file or folder)")
    e.add_argument("--sigma", type=float, default=50.0, help="noise std on the 0-255 scale "
                   "(default 50, the paper's)")
    e.add_argument("--unclipped", action="store_true", help="do not clip the noisy images to "
                   "[0, 1] (default: clipped, as the paper)")
    e.add_argument("--standard", default=None, metavar="REF", help="the standard denoiser")
    e.add_argument("--robust", default=None, metavar="REF", help="the robust denoiser")
    e.add_argument("--no-baseline", action="store_true", help="skip non-local means")
    e.add_argument("--workdir", default="runs/denoise-eval", help="where the table and grid "
                   "go (default runs/denoise-eval)")
    e.add_argument("--experiment", default="arinv", help="MLflow experiment (default arinv)")
    e.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def _common(p) -> None:
    p.add_argument("--encoder", default="alexnet", help="the encoder an alias's denoiser is "
                   "named after (default alexnet; the toy models: alexnet_small)")
    p.add_argument("--gray-to-rgb", action="store_true", help="accept grayscale images as RGB")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow registry; default $MLFLOW_TRACKING_URI or ./mlflow.db")


def model_ref(ref: str, encoder: str) -> str:
    """A registry URI, a file, or an alias -> models:/arinv-<encoder>-denoiser@ALIAS."""
    if ":" in ref or "/" in ref or Path(ref).expanduser().is_file():
        return ref
    return f"models:/arinv-{encoder}-denoiser@{ref}"


def load_model(ref: str, tracking_uri: str, device):
    """The denoiser of a registry URI or checkpoint file; another kind is refused naming it."""
    from arinv.checkpoint import CheckpointError
    from arinv.models.load import load_denoiser
    from pipelines.autoencoders import local_file
    from pipelines.errors import RegistryError

    try:
        path = local_file(ref, "denoiser", tracking_uri, None)
    except RegistryError as e:
        raise type(e)(f"{e}; denoising needs a denoiser, e.g. one 'arinv train-denoiser' "
                      "registered") from None
    try:
        model, cfg = load_denoiser(path)
    except CheckpointError as e:
        raise CheckpointError(f"{ref}: {e}") from None
    return model.to(device).eval(), cfg


def run_train(args, train) -> int:
    from arinv.config import DenoiserTrainConfig
    from pipelines.train_generator import train_generator

    cfg, result, workdir = train(args, DenoiserTrainConfig, train_generator)
    q = result["quality"]
    clip = "clipped" if q["clip"] else "unclipped"
    print(f"held-out denoising on {q['n']} images ({clip} noise, sigma {q['sigma']:g}/255): "
          f"PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f} (noisy input: PSNR "
          f"{q['noisy']['psnr']:.2f} dB, SSIM {q['noisy']['ssim']:.4f})")
    grid = result.get("grid") or result["files"]["reconstructions.png"]
    print(f"grid:       {grid} (rows: clean, noisy, denoised)\nmetrics:    "
          f"{workdir / 'metrics.json'}")
    if result.get("registered"):
        print(f"registered: {result['registered']} (version {result['version']})")
    return 0


def run(args) -> int:
    from arinv.config import ConfigError
    from arinv.train.runtime import resolve_device
    from pipelines.tracking import checked_uri, default_tracking_uri

    uri = checked_uri(args.tracking_uri) if args.tracking_uri else default_tracking_uri()
    device = resolve_device(args.device)
    if args.denoise_command == "eval":
        return _eval(args, uri, device)
    if not args.inputs or not args.out:
        raise ConfigError("arinv denoise needs --in and --out (or the 'eval' command)")
    return _denoise(args, uri, device)


def _denoise(args, uri, device) -> int:
    from arinv.config import ConfigError
    from arinv.downstream import denoise
    from pipelines.image_files import image_files, read_rgb, write_png

    files = image_files(args.inputs, "--in")
    out = Path(args.out)
    if len(files) > 1 and out.suffix:
        raise ConfigError(f"--out {args.out}: {len(files)} input images need a folder")
    images = [read_rgb(f, gray_to_rgb=args.gray_to_rgb) for f in files]  # all read first
    ref = model_ref(args.model, args.encoder)
    model, _ = load_model(ref, uri, device)
    start = time.perf_counter()
    for f, x in zip(files, images):
        dest = out if len(files) == 1 and out.suffix else out / f"{f.stem}.png"
        write_png(denoise(x[None], model)[0], dest)
        print(f"{f.name} -> {dest} ({x.shape[2]} x {x.shape[1]} px)")
    print(f"denoised {len(files)} image(s) in {time.perf_counter() - start:.1f} s with {ref}")
    return 0


def _eval(args, uri, device) -> int:
    from arinv.config import ConfigError
    from pipelines.image_files import image_files, read_rgb

    if not (0 < args.sigma <= 255):
        raise ConfigError(f"--sigma: must be in (0, 255] (0-255 scale), got {args.sigma}")
    files = image_files(args.clean, "--clean")
    clean = [read_rgb(f, gray_to_rgb=args.gray_to_rgb) for f in files]
    small = [f.name for f, x in zip(files, clean) if min(x.shape[1:]) < 11]
    if small:
        raise ConfigError(f"--clean: SSIM needs images of at least 11 px a side: {small}")
    models = {}
    for column in ("standard", "robust"):
        ref = getattr(args, column)
        if ref:
            ref = model_ref(ref, args.encoder)
            models[f"{column} ({ref})"] = load_model(ref, uri, device)[0]
    if not models and args.no_baseline:
        raise ConfigError("nothing to compare: give --standard and / or --robust, or drop "
                          "--no-baseline")
    start = time.perf_counter()
    table = compare(clean, models, Path(args.workdir), sigma=args.sigma,
                    clip=not args.unclipped, baseline=not args.no_baseline)
    print(table["md"])
    print(f"{len(files)} images in {time.perf_counter() - start:.1f} s\ntable:      "
          f"{table['files'][0]}\ngrid:       {table['files'][2]} (rows: clean, "
          f"{', '.join(table['values']['methods'])})")
    if not args.no_track:
        params = {"sigma": args.sigma, "clipped": not args.unclipped, "clean": args.clean,
                  "standard": args.standard, "robust": args.robust, "images": len(files)}
        run_id = track(uri, args.experiment, "denoise-eval", table, params)
        print(f"MLflow:     {uri} run {run_id}")
    return 0


def compare(clean: list, models: dict, workdir: Path, *, sigma: float = 50.0,
            clip: bool = True, baseline: bool = True) -> dict:
    """PSNR / SSIM against each clean 3 x H x W image of: the noisy input (white Gaussian
    noise of std ``sigma`` on the 0-255 scale, seeded by the image's position, clipped to
    [0, 1] with ``clip``), each denoiser of ``models`` (label -> module) and, with
    ``baseline``, scikit-image's non-local means given the true sigma. Writes
    denoise_eval.md / .csv / .json and a grid denoise_eval.png (rows: clean, then each method;
    up to 4 images) to ``workdir``. Returns {"md", "csv", "values", "files"}."""
    from arinv.downstream import add_noise, denoise
    from arinv.metrics.image import psnr, ssim
    from pipelines.image_files import labelled_grid

    rows = {"noisy input": [], **{label: [] for label in models}}
    if baseline:
        rows["non-local means (scikit-image)"] = []
    shown = []
    for i, x in enumerate(clean):
        x = x[None]
        noisy = add_noise(x, sigma / 255, clip=clip, seeds=[i])
        outs = {"noisy input": noisy.clamp(0, 1)}
        outs.update({label: denoise(noisy, model) for label, model in models.items()})
        if baseline:
            outs["non-local means (scikit-image)"] = _nl_means(noisy.clamp(0, 1), sigma / 255)
        for name, y in outs.items():
            rows[name].append((float(psnr(y, x)[0]), float(ssim(y, x)[0])))
        if len(shown) < 4:
            shown.append([x[0]] + [y[0] for y in outs.values()])
    table = _table(rows, len(clean), sigma, clip)
    workdir.mkdir(parents=True, exist_ok=True)
    files = [workdir / f"denoise_eval.{ext}" for ext in ("md", "csv", "png", "json")]
    files[0].write_text(table["md"])
    files[1].write_text(table["csv"])
    labelled_grid(shown, ["clean", *(name.split(" (")[0] for name in rows)], files[2])
    files[3].write_text(json.dumps(table["values"], indent=2))
    return {**table, "files": files}


def _nl_means(noisy, sigma: float):
    import numpy as np
    import torch
    from skimage.restoration import denoise_nl_means

    img = noisy[0].permute(1, 2, 0).double().numpy()
    out = denoise_nl_means(img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                           patch_distance=6, channel_axis=-1)
    return torch.from_numpy(np.clip(out, 0, 1)).permute(2, 0, 1)[None].float()


def _table(rows: dict, n: int, sigma: float, clip: bool) -> dict:
    noise = f"{'clipped' if clip else 'unclipped'} white Gaussian noise, sigma {sigma:g}/255"
    values = {name: {"psnr": sum(p for p, _ in v) / len(v), "ssim": sum(s for _, s in v) / len(v)}
              for name, v in rows.items()}
    md = [f"Denoising: {n} images, {noise} (mean over images)", "",
          "| method | PSNR (dB) ↑ | SSIM ↑ |", "|---|---|---|"]
    md += [f"| {name} | {v['psnr']:.2f} | {v['ssim']:.4f} |" for name, v in values.items()]
    csv = ["method,psnr,ssim"] + [f"\"{name}\",{v['psnr']:.4f},{v['ssim']:.5f}"
                                  for name, v in values.items()]
    return {"md": "\n".join(md) + "\n", "csv": "\n".join(csv) + "\n",
            "values": {"noise": noise, "images": n, "methods": values}}


def track(uri: str, experiment: str, kind: str, table: dict, params: dict, *,
          run_key: str | None = None) -> str:
    """An MLflow run tagged ``arinv.kind=kind`` (the one keyed ``run_key``, default a new one)
    holding ``params``, one metric pair per method of ``table`` (from :func:`compare`) and its
    files."""
    from pipelines import tracking

    run_id = tracking.find_or_create_run(uri, experiment, run_key or f"{kind}-{time.time_ns()}",
                                         run_name=kind, tags={"arinv.kind": kind})
    log = tracking.RunLogger(uri, run_id)
    log.log_params(params)
    metrics = {}
    for name, v in table["values"]["methods"].items():
        key = name.split(" (")[0].replace(" ", "_").replace("-", "_")
        metrics.update({f"{key}_psnr": v["psnr"], f"{key}_ssim": v["ssim"]})
    log.log_metrics(metrics, step=0)
    for f in table["files"]:
        log.log_artifact(f)
    log.close(status="FINISHED")
    return run_id
