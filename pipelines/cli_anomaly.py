"""``arinv anomaly train | score | eval``: the command line of one-vs-all anomaly detection
(``pipelines.anomaly``); registered by ``pipelines.cli``."""

from __future__ import annotations

import argparse
from pathlib import Path

ANOMALY_DESCRIPTION = """One-vs-all anomaly detection (paper Sec. A1, Table A1).

  train  a generator for one positive class: trained on that class's images only, pixel +
         feature losses at the paper's weights for the encoder's kind (standard: 2e-3 / 1e-2,
         robust: 2e-6 / 1e-2), no augmentation, on Ray Train; registered as an autoencoder
         arinv-anomaly-<run name>-class<K> with the alias standard or robust.
  score  Eq. 8 scores of every image of a shard set or image folder (Ray Data batch inference
         on an actor pool), written as Parquet (index, label, score, pixel, feature).
  eval   the protocol: a Ray Tune trial per (encoder, positive class) trains, scores the test
         set and reports its AUROC; writes table_a1.md / .csv (the paper's ADGAN / standard /
         AR numbers beside ours) and roc_class<K>.png, logged to MLflow (a parent run, a child
         run per trial). Relaunching resumes without rerunning finished trials.

examples:
  arinv anomaly eval --config tiny-sample-anomaly        # toy size, bundled photographs, CPU
  arinv anomaly eval --config anomaly-cifar10 --set shards=s3://bucket/cifar10 \\
      --storage-path s3://bucket/runs --tracking-uri http://mlflow:5000
  arinv anomaly train --encoder models:/arinv-alexnet@robust --positive 3 --shards shards/cifar10
  arinv anomaly score --model models:/arinv-anomaly-anomaly-class3@robust \\
      --data shards/cifar10/val --out scores/cifar10-class3 --positive 3
"""


def add_anomaly_parser(sub, add_launch_arguments) -> None:
    a = sub.add_parser("anomaly", help="one-vs-all anomaly detection (Table A1): train a "
                       "generator per positive class, score images with Eq. 8, run the protocol",
                       description=ANOMALY_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = a.add_subparsers(dest="anomaly_command", required=True, metavar="ANOMALY_COMMAND")
    t = asub.add_parser("train", help="train (and register) the generator of one positive class",
                        description="Train a generator inverting ENCODER's tap on the images "
                        "of class --positive only (Sec. A1) on Ray Train, tracked in MLflow and "
                        "registered as an autoencoder.")
    t.add_argument("--encoder", required=True, metavar="URI", help="the frozen encoder: a "
                   "registry URI (models:/arinv-alexnet@robust) or an encoder checkpoint file")
    t.add_argument("--positive", required=True, type=int, metavar="K",
                   help="the positive class (an index into the shard set's classes)")
    t.add_argument("--config", default="anomaly-alexnet-conv5", help="generator preset "
                   "(default anomaly-alexnet-conv5; tiny-sample-anomaly-generator for the "
                   "small AlexNet)")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a generator field, e.g. --set optim.epochs=30")
    t.add_argument("--shards", default=None, metavar="URI", help="a folder or s3:// prefix "
                   "holding train/ and val/ shard sets (default: the preset's data)")
    t.add_argument("--weights", default="auto", choices=["auto", "standard", "robust"],
                   help="loss weights: the paper's for a standard or a robust encoder (auto: "
                   "from the encoder's training config)")
    add_launch_arguments(t, local=False)

    s = asub.add_parser("score", help="Eq. 8 scores of a shard set or image folder (Ray Data)",
                        description="Score every image with Eq. 8 (a latent optimised to "
                        "reconstruct it; higher = more anomalous) on Ray Data actors and write "
                        "the scores as Parquet. Everything is checked first: the model must be "
                        "an autoencoder whose generator inverts --layer, the data readable.")
    s.add_argument("--model", required=True, metavar="URI", help="a registered autoencoder "
                   "(models:/NAME@ALIAS), e.g. one 'arinv anomaly train' registered")
    s.add_argument("--data", required=True, metavar="URI", help="a shard set (folder or s3:// "
                   "prefix with manifest.json), or a folder of images (FOLDER/<class>/<images>, "
                   "or images directly: one class)")
    s.add_argument("--out", required=True, metavar="URI", help="Parquet output: a folder or "
                   "s3:// prefix (replaced), read as one table by pandas / pyarrow")
    s.add_argument("--layer", default=None, help="the tap to score at (default: the one the "
                   "generator inverts; another is refused)")
    s.add_argument("--positive", type=int, nargs="*", default=None, metavar="K",
                   help="with labelled data: also print the AUROC of 'not these classes'")
    s.add_argument("--iters", type=int, default=None, help="latent updates (default 100)")
    s.add_argument("--lr", type=float, nargs=2, default=None, metavar=("FIRST", "LAST"),
                   help="learning rate, decaying linearly (default 0.1 0.001)")
    s.add_argument("--alpha-pix", type=float, default=None,
                   help="default: the generator's loss.pix")
    s.add_argument("--alpha-feat", type=float, default=None,
                   help="default: the generator's loss.feat")
    s.add_argument("--batch-size", type=int, default=None,
                   help="images optimised together per actor (default 64)")
    s.add_argument("--actors", type=int, default=None,
                   help="Ray Data actors (default: one per GPU with --gpu, else per 2 CPUs)")
    s.add_argument("--gpu", action="store_true", help="one GPU per actor")
    s.add_argument("--workdir", default="anomaly-score", help="where an image folder is "
                   "written as shards (default ./anomaly-score)")
    s.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow registry "
                   "(default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    s.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS "
                   "or a new local cluster)")
    s.add_argument("--no-progress", action="store_true")

    e = asub.add_parser("eval", help="the Table A1 protocol (Ray Tune)",
                        description=ANOMALY_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--config", required=True, help="anomaly preset (tiny-sample-anomaly, "
                   "anomaly-cifar10, anomaly-catsdogs) or YAML path")
    e.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="e.g. --set classes=[0,3] --set robust=models:/arinv-alexnet@madry-l2-3")
    add_launch_arguments(e, local=False)


def run(args, launch) -> int:
    """Dispatch ``arinv anomaly``; ``launch(args, cfg)`` builds the run's ``Launch``."""
    return {"train": _train, "score": _score, "eval": _eval}[args.anomaly_command](args, launch)


def _train(args, launch) -> int:
    from arinv.config import AnomalyConfig, validate
    from arinv.experiments import table_a1
    from pipelines.anomaly import model_name, train_positive
    from pipelines.autoencoders import encoder_column
    from pipelines.console import run_quietly

    name = args.run_name or "anomaly"
    an = AnomalyConfig(name=name, generator=args.config, generator_set=args.set,
                       shards=args.shards)
    validate(an)
    run = launch(args, an)
    _, enc_cfg = encoder_column(args.encoder, run.tracking(), run.model_cache)
    column = args.weights if args.weights != "auto" else (
        "standard" if enc_cfg.attack is None else "robust")
    if args.weights == "auto":
        table_a1.check_robustness(column, enc_cfg.attack, args.encoder)
    cfg = table_a1.generator_config(an, column, args.positive, args.encoder)
    run.run_name = cfg.name
    result = run_quietly(run.workdir, args.verbose, lambda: train_positive(
        cfg, run, column=column, model_name=model_name(name, args.positive)))
    q = result["quality"]
    print(f"generator of class {args.positive} ({column} weights: pix {cfg.loss.pix:g}, feat "
          f"{cfg.loss.feat:g}): held-out PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f}")
    print(f"checkpoint: {result['checkpoint']}")
    if result.get("registered"):
        print(f"registered: {result['registered']} (version {result['version']})\n"
              f"score with: arinv anomaly score --model {result['registered']} --data ... "
              "--out ...")
    return 0


def _scoring(args):
    import dataclasses

    from arinv.config import ScoringConfig, validate

    changes = {k: v for k, v in {"iters": args.iters, "lr": args.lr and list(args.lr),
                                 "alpha_pix": args.alpha_pix, "alpha_feat": args.alpha_feat,
                                 "batch_size": args.batch_size, "actors": args.actors}.items()
               if v is not None}
    sc = dataclasses.replace(ScoringConfig(), **changes, use_gpu=args.gpu)
    validate(sc, "scoring")
    return sc


def _score(args, launch) -> int:
    import numpy as np

    from pipelines.anomaly import read_scores, score_command

    res = score_command(args.model, args.data, args.out, scoring=_scoring(args),
                        layer=args.layer, tracking_uri=args.tracking_uri, address=args.address,
                        workdir=args.workdir, positive=args.positive,
                        progress=not args.no_progress)
    s = read_scores(args.out)
    print(f"scored {res['images']} images of {args.data} at {res['layer']} (alpha_pix "
          f"{res['alpha_pix']:g}, alpha_feat {res['alpha_feat']:g}) in {res['seconds']:.1f} s "
          f"({res['images_per_s']:.1f} images/s, {res['actors']} actors); skipped "
          f"{res['skipped']} unreadable samples")
    if len(s["score"]):
        print(f"score: min {s['score'].min():.4g}, median {float(np.median(s['score'])):.4g}, "
              f"max {s['score'].max():.4g}")
    if "auroc" in res:
        print(f"AUROC (anomalous = not class {args.positive}): {res['auroc']:.4f}")
    print(f"scores:     {args.out} (Parquet: index, label, score, pixel, feature)")
    if res.get("paths"):
        print(f"paths:      {res['paths']} (the image file of each index)")
    return 0


def _eval(args, launch) -> int:
    from arinv.config import AnomalyConfig, load_config
    from pipelines.anomaly import run_anomaly
    from pipelines.console import run_quietly

    an = load_config(AnomalyConfig, args.config,
                     [*args.set, *([f"name={args.run_name}"] if args.run_name else [])])
    run = launch(args, an)
    result = run_quietly(run.workdir, args.verbose, lambda: run_anomaly(an, run))
    print("\n" + Path(result["workdir"], "table_a1.md").read_text())
    for f in result["files"]:
        if f.endswith(".png"):
            print(f"ROC plot:   {f}")
    print(f"outputs:    {result['workdir']}\nMLflow:     {result['tracking_uri']} run "
          f"{result['run_id']}")
    return 0 if result["complete"] else 1
