"""The ``arinv`` command. Thin: parses arguments, then calls the library or a pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  arinv quickstart                          # the embedded demo (CPU, bundled photographs)
  arinv presets                             # list the config presets
  arinv config alexnet-imagenet-robust      # show a preset, fully resolved
  arinv train-encoder --config tiny-sample-robust --workdir runs/robust
  arinv train-encoder --config resnet18-cifar10-robust --set attack.eps=1.5 --set data.source=/data/cifar10
  arinv eval-robustness --checkpoint runs/robust/checkpoints/last.pt --eps 0.25 0.5 1 --autoattack-eps 0.5
  arinv train-generator --config tiny-sample-generator --set encoder.checkpoint=runs/robust/checkpoints/last.pt
  arinv data write /data/imagenet shards/imagenet-train --split train   # .beton shards + manifest
  arinv data verify shards/imagenet-train
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arinv", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train adversarially robust encoders and invert their features.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="train a standard and a robust small encoder on the "
                       "bundled photographs and compare their robustness (CPU, a few minutes)")
    q.add_argument("--workdir", default="arinv-quickstart",
                   help="everything the run writes goes here (default: ./arinv-quickstart)")
    q.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of both presets, e.g. --set optim.epochs=2 "
                   "(attack.* fields apply to the robust one only)")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sub.add_parser("presets", help="list config presets")
    c = sub.add_parser("config", help="print a preset or config file, resolved and validated")
    c.add_argument("preset")
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")

    t = sub.add_parser("train-encoder", help="train an encoder (standard, or adversarial when "
                       "the config has an attack) in this process, resuming from the workdir's "
                       "last checkpoint")
    t.add_argument("--config", required=True, help="preset name (see 'arinv presets') or YAML path")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field, e.g. --set attack.eps=1.5 (repeatable)")
    t.add_argument("--workdir", default=None, help="default: runs/<config name>")
    t.add_argument("--no-progress", action="store_true")

    g = sub.add_parser("train-generator", help="train a generator that inverts a frozen "
                       "encoder's features (pixel / feature / GAN losses) in this process")
    g.add_argument("--config", required=True, help="preset name or YAML path")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="e.g. --set encoder.checkpoint=runs/robust/checkpoints/last.pt")
    g.add_argument("--workdir", default=None, help="default: runs/<config name>")
    g.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval-robustness", help="clean, PGD, FGSM and AutoAttack accuracy of a "
                       "trained encoder, with the gradient-masking sanity checks")
    e.add_argument("--checkpoint", required=True, help="an encoder checkpoint (train-encoder)")
    e.add_argument("--data", default=None, help="evaluation data: 'sample' or an ImageFolder root "
                   "with val/ (default: the data the encoder was trained on)")
    e.add_argument("--eps", type=float, nargs="+", default=None, help="PGD radii")
    e.add_argument("--norm", choices=["l2", "linf"], default=None)
    e.add_argument("--steps", type=int, default=None, help="PGD steps (also runs 2x steps)")
    e.add_argument("--autoattack-eps", type=float, nargs="*", default=[],
                   help="also run AutoAttack (reference implementation) at these radii")
    e.add_argument("--autoattack-version", default="standard", choices=["standard", "custom"])
    e.add_argument("--autoattack-attacks", nargs="*", default=None,
                   help="with --autoattack-version custom: e.g. apgd-ce apgd-t")
    e.add_argument("--max-images", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", default=None, help="also write the report to this JSON file")
    _add_data_parser(sub)
    return p


DATA_EPILOG = """sources (detected from SOURCE, or named with --source-format):
  imagefolder  SOURCE/<class>/<images>; labels are the sorted class folder names. With --split S,
               SOURCE/S is used (e.g. ImageNet's train/ or val/).
  cifar10      the extracted cifar-10-batches-py/ folder (or its parent); --split train|test.
  catsdogs     a flat folder of cat.*.jpg and dog.*.jpg (Kaggle Dogs vs. Cats); cat 0, dog 1.
  sample       the bundled sample set: SOURCE 'sample' or 'sample:val' (--split train|val).

Files count as images by extension (.jpg .jpeg .png .ppm .pgm .bmp .tif .tiff .webp .gif, any
case); other files are ignored and counted in the manifest. Images that cannot be decoded (corrupt,
truncated, empty) are skipped and listed in the manifest with the reason; grayscale, CMYK,
palette, alpha and 16-bit images are converted to 8-bit RGB.
"""


def _add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="write a source as FFCV .beton shards + manifest, or verify "
                       "a written shard set")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    w = dsub.add_parser("write", epilog=DATA_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="convert SOURCE into numbered .beton shards and manifest.json in DEST",
                        description="Convert SOURCE into shard-00000.beton, ... and "
                        "manifest.json (written last) in the local folder DEST.")
    w.add_argument("source", metavar="SOURCE", help="a source folder, or 'sample[:SPLIT]'")
    w.add_argument("dest", metavar="DEST", help="output folder or s3://bucket/prefix (must not "
                   "hold a shard set unless --overwrite); S3 output is staged locally, uploaded "
                   "with checksums, manifest last")
    w.add_argument("--source-format", choices=["imagefolder", "cifar10", "catsdogs", "sample"],
                   help="skip format detection")
    w.add_argument("--split", default=None, help="cifar10: train|test, sample: train|val, "
                   "folders: the subfolder to read")
    w.add_argument("--samples-per-shard", type=int, default=1024, metavar="N",
                   help="images per shard (default 1024); a worker holds one shard's images")
    w.add_argument("--max-resolution", type=int, default=500, metavar="R",
                   help="shrink images whose long side exceeds R px (default 500)")
    w.add_argument("--jpeg-quality", type=int, default=90, metavar="Q", help="default 90")
    w.add_argument("--compress-probability", type=float, default=0.5, metavar="P",
                   help="fraction of images stored as JPEG, the rest raw (default 0.5)")
    w.add_argument("--workers", type=int, default=None, metavar="W",
                   help="parallel shard writers (default: min(4, CPUs))")
    w.add_argument("--overwrite", action="store_true", help="replace a shard set already in DEST")
    w.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    v = dsub.add_parser("verify", help="re-hash every shard in DEST against its manifest",
                        description="Check each shard's size, sha256 and sample count against "
                        "DEST/manifest.json; exit 2 naming the first bad shard.")
    v.add_argument("dest", metavar="DEST", help="a folder written by 'arinv data write'")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from arinv.config import ConfigError
    from arinv.data.beton import BetonError
    from arinv.data.shards import ShardError
    from arinv.data.sources import SourceError
    from arinv.data.storage import StorageError
    from arinv.train.state import CheckpointError

    try:
        return _COMMANDS[args.command](args) or 0
    except (ConfigError, CheckpointError, SourceError, ShardError, BetonError, StorageError) as e:
        print(f"arinv {args.command}: error: {e}", file=sys.stderr)
        return 2


def _quickstart(args) -> int:
    from pipelines.quickstart import run_quickstart

    run_quickstart(Path(args.workdir), overrides=args.set, progress=not args.no_progress)
    return 0


def _presets(args) -> int:
    from arinv.config import list_presets, resolve_preset

    for name in list_presets():
        print(f"{name:32s} {resolve_preset(name)}")
    return 0


def _config(args) -> int:
    import yaml

    from arinv.config import config_class, load_config, to_dict

    cfg = load_config(config_class(args.preset), args.preset, args.set)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _train_encoder(args) -> int:
    from arinv.config import EncoderTrainConfig, load_config
    from arinv.train.loop import fit_encoder

    cfg = load_config(EncoderTrainConfig, args.config, args.set)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    result = fit_encoder(cfg, workdir, progress=not args.no_progress)
    print(_report_text(result["robustness"]))
    print(f"checkpoint: {result['checkpoint']}\nmetrics:    {workdir / 'metrics.json'}")
    return 0


def _train_generator(args) -> int:
    from arinv.config import GeneratorTrainConfig, load_config
    from arinv.train.generator_loop import fit_generator

    cfg = load_config(GeneratorTrainConfig, args.config, args.set)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    q = fit_generator(cfg, workdir, progress=not args.no_progress)["quality"]
    lp = "n/a (LPIPS weights not installed)" if q["lpips"] is None else f"{q['lpips']:.4f}"
    print(f"held-out reconstruction on {q['n']} images: PSNR {q['psnr']:.2f} dB, "
          f"SSIM {q['ssim']:.4f}, LPIPS {lp}")
    if "ri_baseline" in q:
        r = q["ri_baseline"]
        print(f"RI baseline (optimisation, {cfg.ri_steps} steps): PSNR {r['psnr']:.2f} dB, "
              f"SSIM {r['ssim']:.4f}")
    print(f"grid:       {workdir / 'reconstructions.png'}\nmetrics:    {workdir / 'metrics.json'}")
    return 0


def _eval_robustness(args) -> int:
    from arinv.config import validate
    from arinv.data.local import local_loaders
    from arinv.train.loop import collect, load_encoder
    from arinv.metrics.robustness import robustness_report
    from arinv.train.runtime import autocast_for, resolve_device

    device = resolve_device(args.device)
    model, cfg = load_encoder(args.checkpoint, device)
    if args.data:
        cfg.data.source = args.data
    ev = cfg.eval
    ev.pgd_eps = args.eps if args.eps is not None else ev.pgd_eps
    ev.norm, ev.pgd_steps = args.norm or ev.norm, args.steps or ev.pgd_steps
    ev.max_images = args.max_images or ev.max_images
    validate(cfg)
    resolution = cfg.model.resolution or model.input_size
    _, val, _ = local_loaders(cfg.data, resolution, cfg.optim.batch_size, cfg.runtime.seed)
    x, y = collect(val, ev.max_images)
    rep = robustness_report(
        model, x, y, eps_list=ev.pgd_eps, norm=ev.norm, steps=ev.pgd_steps,
        batch_size=cfg.optim.batch_size, autocast=autocast_for(device, cfg.runtime.amp),
        autoattack_eps=args.autoattack_eps, autoattack_version=args.autoattack_version,
        autoattack_attacks=args.autoattack_attacks)
    print(f"{args.checkpoint}: {rep.n} images, {ev.norm} attacks")
    print(rep.table())
    if args.json:
        Path(args.json).write_text(json.dumps(rep.as_dict(), indent=2))
    return 0 if all(c["passed"] for c in rep.checks) else 1


def _data(args) -> int:
    from arinv.data.shards import verify_shards, write_shards

    if args.data_command == "verify":
        m = verify_shards(args.dest)
        print(f"{args.dest}: {len(m['shards'])} shards, {m['num_samples']} samples, all match "
              "the manifest")
        return 0
    import tempfile

    from arinv.data import storage

    remote = storage.is_s3(args.dest)
    if remote:  # fail on credentials / bucket before any image is read
        storage.check_access(args.dest, write=True)
        if not args.overwrite and storage.exists(args.dest.rstrip("/") + "/manifest.json"):
            raise storage.StorageError(f"{args.dest}: already holds a shard set; pass --overwrite "
                                       "or choose another prefix")
    with tempfile.TemporaryDirectory(prefix="arinv-shards-") as staging:
        local = Path(staging) / "shards" if remote else Path(args.dest)
        m = write_shards(args.source, local, source_format=args.source_format, split=args.split,
                         samples_per_shard=args.samples_per_shard,
                         max_resolution=args.max_resolution, jpeg_quality=args.jpeg_quality,
                         compress_probability=args.compress_probability, workers=args.workers,
                         overwrite=args.overwrite, progress=not args.no_progress)
        if remote:  # verified multipart uploads, manifest last
            storage.upload_dir(local, args.dest)
    print(f"wrote {m['num_samples']} samples ({len(m['classes'])} classes) in {len(m['shards'])} "
          f"shards to {args.dest}; skipped {len(m['skipped'])} bad inputs, ignored "
          f"{m['ignored']['non_image_files']} non-image files (details in "
          f"{args.dest.rstrip('/')}/manifest.json)")
    return 0


def _report_text(rob: dict) -> str:
    lines = [f"clean accuracy {rob['clean']:.3f} on {rob['n']} held-out images"]
    for eps, acc in rob["pgd"].items():
        lines.append(f"  {rob['norm']} PGD-{rob['steps']} eps {eps:>5}: {acc:.3f}")
    return "\n".join(lines)


_COMMANDS = {"quickstart": _quickstart, "presets": _presets, "config": _config,
             "train-encoder": _train_encoder, "train-generator": _train_generator,
             "eval-robustness": _eval_robustness, "data": _data}

if __name__ == "__main__":
    sys.exit(main())
