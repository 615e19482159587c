"""The ``arinv`` command (and ``python -m pipelines.cli``). Thin: parses arguments, then calls
the library (``--local`` training, evaluation, data) or a pipeline (Ray Train, Tune)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  arinv quickstart                          # the main job at toy size (2 CPU cores, 8-16 min)
  arinv presets                             # list the config presets
  arinv config alexnet-imagenet-robust      # show a preset, fully resolved
  arinv train-encoder --config tiny-sample-robust                   # Ray Train, MLflow in runs/
  arinv train-encoder --config resnet18-cifar10-robust --set attack.eps=1.5 --set data.shards=s3://b/cifar10
  arinv train-generator --config tiny-sample-generator --set encoder.checkpoint=models:/arinv-alexnet_small@robust
  arinv train-encoder --config tiny-sample-robust --local --workdir runs/local   # one process, no Ray
  arinv sweep --config tiny-sample-sweep                              # Table A3 at toy size (Ray Tune)
  arinv eval-robustness --checkpoint runs/tiny-sample-robust/final/state.pt --eps 0.25 0.5 1 --autoattack-eps 0.5
  arinv data write /data/imagenet/train shards/imagenet/train       # .beton shards + manifest
  arinv data verify shards/imagenet/train
  arinv anomaly eval --config tiny-sample-anomaly                     # Table A1 at toy size
  arinv eval-scale --config tiny-sample-scale                         # Table A2 at toy size
  arinv ablation --config tiny-sample-ablation                        # Fig. A2 at toy size
  arinv demo style                    # conv2/conv1 style generators on the quickstart's encoders, pictures
  arinv demo denoise                  # standard vs robust wavelet denoisers on the bundled photographs
  arinv stylize --content photo.jpg --style painting.jpg --out styled.png --models robust
  arinv train-denoiser --config tiny-sample-denoiser --set encoder.checkpoint=models:/arinv-alexnet_small@robust
  arinv denoise --in noisy/ --out denoised/ --model robust --encoder alexnet_small
  arinv denoise eval --clean photos/ --standard standard --robust robust --encoder alexnet_small
  arinv models import cifar_l2_0_5.pt --encoder resnet18_cifar --alias madry-l2-05 --robust-eps 0.5
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arinv", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train adversarially robust encoders and invert their features.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="the whole pipeline at toy size: shards, a standard "
                       "and a robust encoder and a generator for each on Ray Train, MLflow "
                       "registry, report (2 CPU cores, 8-16 minutes)",
                       description="Write the bundled photographs as shards; train a standard "
                       "and a robust small AlexNet and a conv5 generator for each on Ray Train; "
                       "register them in MLflow; write DIR/report.md (accuracy under PGD, PSNR / "
                       "SSIM, reconstruction grid). Rerunning resumes or reuses finished runs.")
    _add_toy_run_arguments(q, "everything the run writes goes here",
                           "override a field in every preset that has it, e.g. --set "
                           "optim.epochs=2 (attack.* fields apply to the robust encoder only); "
                           "prefix encoders. or generators. for one stage only, e.g. --set "
                           "generators.optim.epochs=32")
    q.add_argument("--shards", default=None, metavar="URI", help="a folder or s3:// prefix with "
                   "train/ and val/ shard sets instead of the bundled photographs (16 classes; "
                   "for another count, --set encoder.num_classes=N)")

    m = sub.add_parser("demo", help="style transfer or denoising at toy size on the "
                       "quickstart's encoders: train, apply, pictures (CPU, minutes)",
                       description="APP style: train the conv2 and conv1 style generators over "
                       "the quickstart's standard and robust encoders (Ray Train, registered), "
                       "then stylize held-out parts of the bundled photographs with both model "
                       "sets: DIR/style/style.png. APP denoise: train the wavelet denoiser over "
                       "each encoder (registered), then compare PSNR / SSIM of the noisy input, "
                       "both denoisers and non-local means on the held-out parts of the bundled "
                       "photographs: DIR/denoise/denoise_eval.md and .png. Runs the quickstart "
                       "first when its models are not in DIR's registry; rerunning reuses "
                       "finished trainings.")
    m.add_argument("app", choices=["style", "denoise"], metavar="APP", help="style or denoise")
    _add_toy_run_arguments(m, "the quickstart's folder", "override a field of every preset "
                           "the demo trains, e.g. --set optim.epochs=2")

    sub.add_parser("presets", help="list config presets")
    c = sub.add_parser("config", help="print a preset or config file, resolved and validated")
    c.add_argument("preset")
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")

    t = sub.add_parser("train-encoder", help="train an encoder (standard, or adversarial when "
                       "the config has an attack) on Ray Train, tracked in MLflow",
                       description=TRAIN_DESCRIPTION)
    t.add_argument("--config", required=True, help="preset name (see 'arinv presets') or YAML path")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field, e.g. --set attack.eps=1.5 (repeatable)")
    _add_launch_arguments(t)

    g = sub.add_parser("train-generator", help="train a generator that inverts a frozen "
                       "encoder's features (pixel / feature / GAN losses) on Ray Train",
                       description=TRAIN_DESCRIPTION)
    g.add_argument("--config", required=True, help="preset name or YAML path")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="e.g. --set encoder.checkpoint=models:/arinv-alexnet_small@robust")
    _add_launch_arguments(g)

    w = sub.add_parser("sweep", help="Ray Tune sweep: Table A3 (encoder + generator per "
                       "robustness level eps) or a loss-weight search with ASHA",
                       description=SWEEP_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--config", required=True, help="sweep preset (e.g. sweep-resnet18-cifar10-"
                   "eps, tiny-sample-sweep) or YAML path")
    w.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a sweep field, e.g. --set eps=[0,1,2] --set shards=s3://b/c10 "
                   "--set 'encoder_set=[optim.epochs=30]'")
    _add_launch_arguments(w, local=False)

    e = sub.add_parser("eval-robustness", help="clean, PGD, FGSM and AutoAttack accuracy of a "
                       "trained encoder, with the gradient-masking sanity checks")
    e.add_argument("--checkpoint", required=True, help="an encoder checkpoint (train-encoder)")
    e.add_argument("--data", default=None, metavar="URI",
                   help="held-out data: a shard set (folder or s3://), a prefix holding val/, "
                   "'sample' or an ImageFolder root with train/ and val/ (default: the data "
                   "the encoder was trained on)")
    e.add_argument("--workdir", default=str(Path.home() / ".cache" / "arinv" / "eval"),
                   help="where sources other than shard sets are written as shards "
                   "(default ~/.cache/arinv/eval)")
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
    _add_scale_parser(sub)
    _add_ablation_parser(sub)
    _add_data_parser(sub)
    from pipelines.cli_anomaly import add_anomaly_parser

    add_anomaly_parser(sub, _add_launch_arguments)
    from pipelines.cli_denoise import add_denoise_parsers
    from pipelines.cli_style import add_stylize_parser

    add_stylize_parser(sub)
    add_denoise_parsers(sub, _add_launch_arguments, TRAIN_DESCRIPTION)
    _add_models_parser(sub)
    return p


SCALE_DESCRIPTION = """Robustness to scale changes (paper Sec. A2.2, Table A2, Fig. A3).

For each L in the config's factors (paper: 1..10), the evaluation images are resized to the
encoders' resolution, upscaled L times (bicubic), encoded at that full size and reconstructed by
each autoencoder (standard, robust) from the registry; the reconstructions are compared with the
upscaled images (PSNR, SSIM, and LPIPS where its weights are installed). Memory is bounded at
any L: forward passes hold at most max_pixels target pixels (one 2240 px image by default).

Writes WORKDIR/table_a2.md / .csv (the paper's values in parentheses), fig_a3.png (per example
image: the upscaled inputs, L left to right, then each column's reconstructions, every tile
shown at the same size) and results.json, logged to MLflow: a parent run and a child run per
column whose psnr / ssim / lpips are logged at step L.

examples:
  arinv eval-scale --config tiny-sample-scale          # toy: trains the quickstart's pair if
                                                       # missing, then the table (CPU, < 10 min)
  arinv eval-scale --config tiny-sample-scale --workdir arinv-quickstart \\
      --tracking-uri sqlite:///arinv-quickstart/mlflow.db    # the quickstart's models
  arinv eval-scale --config scale-alexnet-imagenet --set data=shards/imagenet/val \\
      --tracking-uri http://mlflow:5000
"""


def _add_scale_parser(sub) -> None:
    s = sub.add_parser("eval-scale", help="Table A2 / Fig. A3: reconstruct upscaled images "
                       "(L = 1..10) with a standard and a robust autoencoder from the registry",
                       description=SCALE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", default="tiny-sample-scale",
                   help="preset or YAML file (default tiny-sample-scale; the paper's: "
                   "scale-alexnet-imagenet)")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set robust=models:/NAME@ALIAS --set "
                   "'factors=[1, 2, 10]' --set images=64 --set data=DIR")
    _add_experiment_arguments(s, "Ray cluster for training missing models (train_missing)")


ABLATION_DESCRIPTION = """The loss ablation (paper Sec. A2.1, Fig. A2) on Ray Tune.

For one encoder pair (standard, robust; registry URIs or checkpoint files), one trial per
criterion and encoder: generators trained with the pixel loss; pixel + feature; pixel + feature
+ GAN (each on Ray Train, the full criterion's weights from the generator preset for every term
kept), and the optimisation-based RI inversion (no generator). Every trial reconstructs the
same held-out images and measures PSNR, SSIM and LPIPS (where its weights are installed).

Writes WORKDIR/table_fig_a2.md / .csv (a row per criterion), fig_a2.png (ground truth, then each
criterion's standard and AR rows) and results.json, logged to MLflow: a parent run and a child
run per trial. Relaunching with the same config and --storage-path resumes.

examples:
  arinv ablation --config tiny-sample-ablation          # toy: trains the quickstart's encoders
                                                        # if missing, then 8 trials (CPU)
  arinv ablation --config tiny-sample-ablation --workdir arinv-quickstart \\
      --tracking-uri sqlite:///arinv-quickstart/mlflow.db    # the quickstart's encoders
  arinv ablation --config ablation-alexnet-conv5 --set shards=s3://bucket/imagenet \\
      --storage-path s3://bucket/runs --tracking-uri http://mlflow:5000
"""


def _add_ablation_parser(sub) -> None:
    s = sub.add_parser("ablation", help="Fig. A2: invert a standard and a robust encoder with "
                       "pixel / + feature / + GAN generators and RI, as Tune trials",
                       description=ABLATION_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", default="tiny-sample-ablation",
                   help="preset or YAML file (default tiny-sample-ablation; the paper's: "
                   "ablation-alexnet-conv5)")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field, e.g. --set robust=models:/NAME@ALIAS --set "
                   "'criteria=[pixel, ri]' --set images=64")
    s.add_argument("--storage-path", default=None, metavar="URI",
                   help="Tune and Ray Train state, trial results: a folder or s3://bucket/prefix "
                   "(shared by all nodes of a multi-node cluster); default WORKDIR/ray")
    _add_experiment_arguments(s, "Ray cluster address")


def _add_experiment_arguments(s, address: str) -> None:
    """What a downstream experiment command (eval-scale, ablation) shares."""
    s.add_argument("--workdir", default=None,
                   help="outputs (table, figure, results.json); default runs/<name>")
    s.add_argument("--run-name", default=None, help="default: the config's name")
    s.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking server and registry the models come from; default "
                   "$MLFLOW_TRACKING_URI or ./mlflow.db")
    s.add_argument("--experiment", default="arinv", help="MLflow experiment (default arinv)")
    s.add_argument("--address", default=None,
                   help=f"{address}; default $RAY_ADDRESS or a new local cluster")
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_verbose(s)


TRAIN_DESCRIPTION = """Runs the config on Ray Train (a local Ray cluster unless --address or
RAY_ADDRESS names one): data from data.shards (the bundled sample set is written as shards
when data.source is 'sample'), DDP over scaling.num_workers, a checkpoint per epoch under
--storage-path, MLflow tracking, and at the end registration in the MLflow model registry.
Relaunching with the same --run-name and --storage-path resumes from the last checkpoint and
logs into the same MLflow run. --local trains in this process instead (no Ray, no MLflow)."""


SWEEP_DESCRIPTION = """Runs a sweep on Ray Tune; every trial fits Ray Train runs.

Table A3 (no 'search' in the config): one trial per eps: train the encoder with L2 PGD at
eps, measure clean accuracy and PGD accuracy at the table's radius, train a generator with
pixel + feature losses, measure PSNR / SSIM / LPIPS on held-out images.
Loss-weight search ('search:' set): one trial per sampled (pix, feat, gan) for a fixed
encoder, ASHA stopping weak trials on the held-out metric; the best weights become a preset.

As many trials run at once as the cluster's resources fit (or max_concurrent). A failed
trial is retried max_failures times and resumes its runs from their checkpoints; relaunching
the same sweep (name, --storage-path) resumes it without rerunning finished trials.
Writes to WORKDIR: table_a3.md / .csv (or search.md), trials.csv, sweep.png,
reconstructions.png, results.json (and the best preset); MLflow: a parent run, one child run
per trial, the best pair registered under --alias (default <name>-best)."""


def _add_launch_arguments(p: argparse.ArgumentParser, local: bool = True) -> None:
    p.add_argument("--workdir", default=None,
                   help="local outputs: final checkpoint, metrics.json; default runs/<run name>")
    p.add_argument("--run-name", default=None, help="default: the config's name")
    p.add_argument("--storage-path", default=None, metavar="URI",
                   help="Ray Train checkpoints: a folder or s3://bucket/prefix (shared by all "
                   "nodes of a multi-node cluster); default WORKDIR/ray")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking server and registry; default $MLFLOW_TRACKING_URI or "
                   "./mlflow.db (sqlite), shared by every command run from this folder and "
                   "found there by a bare mlflow client or 'mlflow ui'")
    p.add_argument("--experiment", default="arinv", help="MLflow experiment (default arinv)")
    p.add_argument("--alias", default=None, help="registry alias (default: robust/standard for "
                   "encoders, the encoder's alias for generators)")
    p.add_argument("--no-register", action="store_true", help="skip the model registry")
    p.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS "
                   "or a new local cluster)")
    if local:
        p.add_argument("--local", action="store_true", help="single process, no Ray / MLflow: "
                       "checkpoints in WORKDIR/checkpoints")
    _add_verbose(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_verbose(p) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's, Ray Data's, Ray Tune's and the workers' own output and "
                   "progress bars here (default: one bar per training stage or Tune "
                   "experiment here, the rest in WORKDIR/arinv.log)")


DATA_EPILOG = """sources (detected from SOURCE, or named with --source-format):
  imagefolder  SOURCE/<class>/<images>; labels are the sorted class folder names. With --split S,
               SOURCE/S is used (e.g. ImageNet's train/ or val/).
  cifar10      the extracted cifar-10-batches-py/ folder (or its parent); --split train|test.
  catsdogs     a flat folder of cat.*.jpg and dog.*.jpg (Kaggle Dogs vs. Cats); cat 0, dog 1.
  sample       a bundled set: SOURCE 'sample' (8 colour photographs) or 'sample-gray' (16
               grayscale photographs and textures, the quickstart's task), or 'sample:val'
               (--split train|val).

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
                        "manifest.json (written last) in DEST, a local folder or s3:// prefix. "
                        "Shards are written in parallel by worker processes here, or by Ray "
                        "tasks on a cluster given with --ray-address or RAY_ADDRESS (also "
                        "'python -m pipelines.write_shards', for 'ray job submit').")
    add_data_write_arguments(w)
    v = dsub.add_parser("verify", help="re-hash every shard in DEST against its manifest",
                        description="Check each shard's size, sha256 and sample count against "
                        "DEST/manifest.json; exit 2 naming the first bad shard.")
    v.add_argument("dest", metavar="DEST", help="a folder written by 'arinv data write'")


MODELS_IMPORT_EPILOG = """layouts (detected; or name one with --layout):
  torchvision  a bare state dict with the encoder's keys: torch.save(model.state_dict(), F)
               (torchvision's AlexNet weights fit --encoder alexnet)
  robustness   a MadryLab robustness library checkpoint: {'model': {'module.model.*',
               'module.attacker.model.*', 'module.normalizer.new_mean', ...}, 'epoch': N};
               its normaliser must equal the encoder's own (ImageNet or CIFAR-10 statistics)

The file is read as weights only: one that holds pickled objects (e.g. an argparse Namespace)
is refused; re-save its weights where you trust it: torch.save({'model': ckpt['model']}, F).
Every key and shape must fit the encoder (num_classes is read from the head).

examples:
  arinv models import imagenet_l2_3_0.pt --encoder alexnet --alias madry-l2-3 --robust-eps 3.0
  arinv models import alexnet-owt-7be5be79.pt --encoder alexnet --alias torchvision
  arinv train-generator --config alexnet-conv5-gan \\
      --set encoder.checkpoint=models:/arinv-alexnet@madry-l2-3
"""


def _add_models_parser(sub) -> None:
    m = sub.add_parser("models", help="bring your own encoder: register a published "
                       "classifier (torchvision, robustness library) in the MLflow registry")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")
    i = msub.add_parser("import", epilog=MODELS_IMPORT_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        help="register a published classifier's weights as an arinv encoder",
                        description="Check FILE's weights against a registered arinv encoder "
                        "(every key and shape, the input normaliser), write them as an arinv "
                        "encoder checkpoint and register it in the MLflow model registry as "
                        "NAME@ALIAS, from a run tagged arinv.kind=import that records the "
                        "file's name and sha256. Rerunning with the same file and alias "
                        "registers nothing new. The registered URI works wherever an encoder "
                        "checkpoint does, e.g. encoder.checkpoint of a generator config.")
    i.add_argument("file", metavar="FILE", help="the checkpoint file (.pt / .pth / .ckpt)")
    i.add_argument("--encoder", required=True, metavar="ENCODER",
                   help="the registered encoder the weights belong to (alexnet, alexnet_small, "
                   "resnet18_cifar, resnet18_cifar_small)")
    i.add_argument("--alias", required=True, help="registry alias, e.g. madry-l2-3 (letters, "
                   "digits, '_' and '-')")
    i.add_argument("--name", default=None, help="registered model name (default "
                   "arinv-ENCODER, where trained encoders go too)")
    i.add_argument("--robust-eps", type=float, default=None, metavar="EPS",
                   help="the model was adversarially trained at this radius (in [0, 1] pixel "
                   "units): record it as a robust encoder; default: a standard encoder")
    i.add_argument("--robust-norm", choices=["l2", "linf"], default="l2",
                   help="the norm of --robust-eps (default l2)")
    i.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="check the head has N outputs (default: read from the file)")
    i.add_argument("--layout", choices=["auto", "torchvision", "robustness"], default="auto",
                   help="the file's layout (default: detected)")
    i.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking server and registry; default $MLFLOW_TRACKING_URI or "
                   "./mlflow.db (sqlite)")
    i.add_argument("--experiment", default="arinv", help="MLflow experiment of the import run "
                   "(default arinv)")


def _models(args) -> int:
    from pipelines.registry import import_encoder
    from pipelines.tracking import checked_uri, default_tracking_uri

    uri = checked_uri(args.tracking_uri) if args.tracking_uri else default_tracking_uri()
    r = import_encoder(uri, args.file, args.encoder, name=args.name, alias=args.alias,
                       experiment=args.experiment, robust_eps=args.robust_eps,
                       robust_norm=args.robust_norm, num_classes=args.num_classes,
                       layout=args.layout)
    info = r["info"]
    kind = (f"robust ({args.robust_norm} eps {args.robust_eps:g}, as declared)"
            if args.robust_eps is not None else "standard (no --robust-eps)")
    epoch = f", epoch {info['epoch']}" if "epoch" in info else ""
    print(f"{args.file}: {info['layout']} layout{epoch}, {info['num_classes']} classes, sha256 "
          f"{info['sha256'][:16]}...; fits {args.encoder}; {kind}")
    done = "already registered" if r["reused"] else "registered"
    print(f"{done}: {r['uri']} (version {r['version']})\nMLflow:     {uri} run {r['run_id']}")
    print(f"use it as a generator's encoder: --set encoder.name={args.encoder} --set "
          f"encoder.checkpoint={r['uri']}\n"
          f"or in Python: mlflow.pyfunc.load_model({r['uri']!r}), "
          f"pipelines.registry.fetch_checkpoint({r['uri']!r})")
    return 0


def add_data_write_arguments(w: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of 'arinv data write', shared with 'python -m pipelines.write_shards'."""
    w.add_argument("source", metavar="SOURCE", help="a source folder, or 'sample[:SPLIT]'; with "
                   "Ray on several nodes a folder must be at this path on every node")
    w.add_argument("dest", metavar="DEST", help="output folder or s3://bucket/prefix (must not "
                   "hold a shard set unless --overwrite). S3: each shard is uploaded, verified, "
                   "from where it was written; the manifest goes last. With Ray on several "
                   "nodes a folder must be on a filesystem all nodes share at this path")
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
                   help="shards written at once (default: min(4, CPUs) processes; with Ray, as "
                   "many tasks as the cluster has CPUs for)")
    w.add_argument("--ray-address", "--address", dest="ray_address", default=None,
                   metavar="ADDR", help="write the shards as Ray tasks on this cluster: host:port, "
                   "'auto' (the cluster 'ray start' began here) or 'local' (start one for this "
                   "run). Default: $RAY_ADDRESS; without either, 'arinv data write' uses worker "
                   "processes and 'python -m pipelines.write_shards' starts a local cluster")
    w.add_argument("--overwrite", action="store_true", help="replace a shard set already in DEST")
    w.add_argument("--shuffle-seed", type=int, default=0, metavar="S",
                   help="write samples in an order permuted with seed S (default 0), so that a "
                   "stream read shard by shard mixes classes; -1 keeps the source order")
    w.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return w


# Library chatter that says nothing to a user of the command (a new sqlite store's schema set-up).
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # one bar per file of every model fetched from the registry is a wall, not progress
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from arinv.checkpoint import CheckpointError
    from arinv.config import ConfigError
    from arinv.data.beton import BetonError
    from arinv.data.shards import ShardError
    from arinv.data.sources import SourceError
    from arinv.data.storage import StorageError
    from pipelines.errors import RegistryError, TrackingRefused, TrackingUnreachable

    try:
        return _COMMANDS[args.command](args) or 0
    except (ConfigError, CheckpointError, SourceError, ShardError, BetonError, StorageError,
            RegistryError, TrackingUnreachable, TrackingRefused) as e:
        print(f"arinv {args.command}: error: {e}", file=sys.stderr)
        return 2


def _add_toy_run_arguments(p, workdir_help: str, set_help: str) -> None:
    """The arguments of the commands that work in the quickstart's folder."""
    p.add_argument("--workdir", default="arinv-quickstart",
                   help=f"{workdir_help} (default: ./arinv-quickstart)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=set_help)
    p.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS or "
                   "a new local cluster)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite "
                   "in the workdir)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_verbose(p)


def _quickstart(args) -> int:
    from pipelines.console import quiet
    from pipelines.quickstart import run_quickstart

    with quiet(Path(args.workdir) / "arinv.log", enabled=not args.verbose):
        run_quickstart(Path(args.workdir), overrides=args.set, progress=not args.no_progress,
                       verbose=args.verbose, address=args.address,
                       tracking_uri=args.tracking_uri, shards=args.shards)
    return 0


def _demo(args) -> int:
    from pipelines.console import quiet
    from pipelines.demos import run_demo

    with quiet(Path(args.workdir) / "arinv.log", enabled=not args.verbose):
        run_demo(args.app, Path(args.workdir), overrides=args.set,
                 progress=not args.no_progress, verbose=args.verbose, address=args.address,
                 tracking_uri=args.tracking_uri)
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


def _launch(args, cfg):
    from pipelines.trainer import Launch

    name = args.run_name or cfg.name
    return Launch(workdir=Path(args.workdir or Path("runs") / name), run_name=name,
                  storage_path=args.storage_path, tracking_uri=args.tracking_uri,
                  experiment=args.experiment, register=not args.no_register, alias=args.alias,
                  address=args.address, progress=not args.no_progress,
                  verbose=getattr(args, "verbose", False))


def _train(args, cls, pipeline):
    """(config, result, workdir): the one training loop in this process with --local (no Ray,
    no MLflow), else on Ray Train through ``pipeline``."""
    from arinv.config import load_config

    cfg = load_config(cls, args.config, args.set)
    if args.local:
        from arinv.train.local import fit_local

        workdir = Path(args.workdir or Path("runs") / cfg.name)
        inputs = {}
        ref = getattr(getattr(cfg, "encoder", None), "checkpoint", None)
        if ref and ":/" in ref:  # a registry URI or s3:// object: fetched first (needs MLflow)
            from pipelines.registry import task_inputs

            inputs = task_inputs(cfg, _launch(args, cfg).tracking(), None)
        return cfg, fit_local(cfg, workdir, progress=not args.no_progress, **inputs), workdir
    from pipelines.console import run_quietly

    run = _launch(args, cfg)
    return cfg, run_quietly(run.workdir, args.verbose, lambda: pipeline(cfg, run)), run.workdir


def _train_encoder(args) -> int:
    from arinv.config import EncoderTrainConfig
    from pipelines.train_encoder import train_encoder

    cfg, result, workdir = _train(args, EncoderTrainConfig, train_encoder)
    print(_report_text(result["robustness"]))
    print(f"checkpoint: {result['checkpoint']}\nmetrics:    {workdir / 'metrics.json'}")
    if result.get("registered"):
        print(f"registered: {result['registered']} (version {result['version']})\n"
              f"MLflow:     {result['tracking_uri']} run {result['run_id']}")
    return 0


def _train_generator(args) -> int:
    from arinv.config import GeneratorTrainConfig
    from pipelines.train_generator import train_generator

    cfg, result, workdir = _train(args, GeneratorTrainConfig, train_generator)
    q = result["quality"]
    lp = "n/a (LPIPS weights not installed)" if q["lpips"] is None else f"{q['lpips']:.4f}"
    print(f"held-out reconstruction on {q['n']} images: PSNR {q['psnr']:.2f} dB, "
          f"SSIM {q['ssim']:.4f}, LPIPS {lp}")
    if "ri_baseline" in q:
        r = q["ri_baseline"]
        print(f"RI baseline (optimisation, {cfg.eval.ri_steps} steps): PSNR {r['psnr']:.2f} "
              f"dB, SSIM {r['ssim']:.4f}")
    grid = result.get("grid") or result["files"]["reconstructions.png"]
    print(f"grid:       {grid}\nmetrics:    {workdir / 'metrics.json'}")
    if result.get("registered"):
        print(f"registered: {result['registered']} (version {result['version']})")
    return 0


def _sweep(args) -> int:
    from arinv.config import SweepConfig, load_config
    from pipelines.console import run_quietly
    from pipelines.sweep import run_sweep

    cfg = load_config(SweepConfig, args.config,
                      [*args.set, *([f"name={args.run_name}"] if args.run_name else [])])
    run = _launch(args, cfg)
    result = run_quietly(run.workdir, args.verbose, lambda: run_sweep(cfg, run))
    tables = [f for f in result["files"] if f.endswith(".md")]
    for f in tables:
        print("\n" + Path(f).read_text())
    best = result["best"]
    if best is None:
        print("no trial finished: see trials.csv and the Ray / MLflow logs")
        return 1
    print(f"best trial: {best['trial']} (PSNR {best['psnr']:.3f} dB, SSIM {best['ssim']:.4f})")
    for kind, uri in result.get("registered", {}).items():
        print(f"registered {kind}: {uri}")
    if result.get("preset"):
        print(f"best weights as a preset: {result['preset']}")
    print(f"outputs:    {result['workdir']}\nMLflow:     {result['tracking_uri']} run "
          f"{result['run_id']}")
    return 0


def _eval_robustness(args) -> int:
    from arinv.config import ConfigError, validate
    from arinv.data.reader import ShardBatches
    from arinv.metrics.robustness import robustness_report
    from arinv.models.load import load_encoder
    from arinv.train.run import collect
    from arinv.train.runtime import autocast_for, resolve_device

    if args.autoattack_version == "custom" and not args.autoattack_attacks:
        raise ConfigError("--autoattack-version custom: name the attacks to run with "
                          "--autoattack-attacks (e.g. apgd-ce apgd-t)")
    device = resolve_device(args.device)
    model, cfg = load_encoder(args.checkpoint, device)
    ev = cfg.eval
    ev.pgd_eps = args.eps if args.eps is not None else ev.pgd_eps
    ev.norm, ev.pgd_steps = args.norm or ev.norm, args.steps or ev.pgd_steps
    ev.images = args.max_images or ev.images
    validate(cfg)
    resolution = cfg.encoder.resolution or model.input_size
    val = ShardBatches(_held_out(args.data, cfg.data, args.workdir), cfg.optim.batch_size,
                       resolution=resolution, train=False)
    x, y = collect(val, ev.images)
    rep = robustness_report(
        model, x, y, eps_list=ev.pgd_eps, norm=ev.norm, steps=ev.pgd_steps,
        batch_size=cfg.optim.batch_size, autocast=autocast_for(device, cfg.runtime.amp),
        autoattack_eps=args.autoattack_eps, autoattack_version=args.autoattack_version,
        autoattack_attacks=args.autoattack_attacks)
    print(f"{args.checkpoint}: {rep.n} images of {val.uri}, {ev.norm} attacks")
    print(rep.table())
    if args.json:
        Path(args.json).write_text(json.dumps(rep.as_dict(), indent=2))
    return 0 if all(c["passed"] for c in rep.checks) else 1


def _held_out(data: str | None, data_cfg, workdir: str) -> str:
    """The held-out shard set to evaluate on: ``data`` (a shard set, a prefix holding val/,
    'sample' or an ImageFolder root), else the data the encoder was trained on; sources are
    written as shards under ``workdir`` first."""
    from arinv.data.reader import has_manifest, join, run_shards

    if data and has_manifest(data):
        return data
    if data:
        data_cfg.shards, data_cfg.source = (data, data_cfg.source) if has_manifest(
            join(data, "val")) else (None, data)
    return join(run_shards(data_cfg, workdir), "val")


def _data(args) -> int:
    from arinv.data.shards import verify_shards

    if args.data_command == "verify":
        m = verify_shards(args.dest)
        print(f"{args.dest}: {len(m['shards'])} shards, {m['num_samples']} samples, all match "
              "the manifest")
        return 0
    return data_write(args)


def data_write(args) -> int:
    """'arinv data write' (also the body of 'python -m pipelines.write_shards'): Ray tasks when
    args.ray_address or RAY_ADDRESS names a cluster, worker processes otherwise."""
    import os

    from arinv.data.shards import write_shards

    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    connected = False
    if address:
        import ray

        if not ray.is_initialized():
            local = {"include_dashboard": False} if address == "local" else {}
            ray.init(address=address, **local)
            connected = True
    try:
        m = write_shards(args.source, args.dest, source_format=args.source_format,
                         split=args.split, samples_per_shard=args.samples_per_shard,
                         max_resolution=args.max_resolution, jpeg_quality=args.jpeg_quality,
                         compress_probability=args.compress_probability, workers=args.workers,
                         executor="ray" if address else "process", overwrite=args.overwrite,
                         shuffle_seed=None if args.shuffle_seed < 0 else args.shuffle_seed,
                         progress=not args.no_progress)
    finally:
        if connected:
            ray.shutdown()
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


def _eval_scale(args) -> int:
    from arinv.config import ScaleConfig, load_config
    from pipelines.console import run_quietly
    from pipelines.scale import run_scale
    from pipelines.trainer import Launch

    cfg = load_config(ScaleConfig, args.config,
                      [*args.set, *([f"name={args.run_name}"] if args.run_name else [])])
    run = Launch(workdir=Path(args.workdir or Path("runs") / cfg.name), run_name=cfg.name,
                 tracking_uri=args.tracking_uri, experiment=args.experiment,
                 address=args.address, progress=not args.no_progress)
    r = run_quietly(run.workdir, args.verbose, lambda: run_scale(cfg, run))
    print("\n" + Path(r["workdir"], "table_a2.md").read_text())
    print(f"figure:     {Path(r['workdir'], 'fig_a3.png')}\noutputs:    {r['workdir']}\n"
          f"MLflow:     {r['tracking_uri']} run {r['run_id']}")
    return 0


def _ablation(args) -> int:
    from arinv.config import AblationConfig, load_config
    from pipelines.ablation import run_ablation
    from pipelines.console import run_quietly
    from pipelines.trainer import Launch

    cfg = load_config(AblationConfig, args.config,
                      [*args.set, *([f"name={args.run_name}"] if args.run_name else [])])
    run = Launch(workdir=Path(args.workdir or Path("runs") / cfg.name), run_name=cfg.name,
                 storage_path=args.storage_path, tracking_uri=args.tracking_uri,
                 experiment=args.experiment, address=args.address,
                 progress=not args.no_progress, register=False)
    r = run_quietly(run.workdir, args.verbose, lambda: run_ablation(cfg, run))
    print("\n" + Path(r["workdir"], "table_fig_a2.md").read_text())
    print(f"figure:     {Path(r['workdir'], 'fig_a2.png')}\noutputs:    {r['workdir']}\n"
          f"MLflow:     {r['tracking_uri']} run {r['run_id']}")
    return 0 if r["complete"] else 1


def _train_denoiser(args) -> int:
    from pipelines.cli_denoise import run_train

    return run_train(args, _train)


def _denoise(args) -> int:
    from pipelines.cli_denoise import run

    return run(args)


def _stylize(args) -> int:
    from pipelines.cli_style import run

    return run(args)


def _anomaly(args) -> int:
    from pipelines.cli_anomaly import run

    return run(args, _launch)


_COMMANDS = {"quickstart": _quickstart, "demo": _demo, "presets": _presets, "config": _config,
             "train-encoder": _train_encoder, "train-generator": _train_generator,
             "sweep": _sweep,
             "eval-robustness": _eval_robustness, "eval-scale": _eval_scale, "ablation": _ablation,
             "data": _data,
             "anomaly": lambda args: _anomaly(args), "stylize": _stylize,
             "train-denoiser": _train_denoiser, "denoise": _denoise,
             "models": _models}

if __name__ == "__main__":
    sys.exit(main())
