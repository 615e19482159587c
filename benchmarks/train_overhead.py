#!/usr/bin/env python
"""What does Ray Train cost? The adversarial encoder step over the same Ray Data stream,

  (a) bare     -- this process iterates ``read_shards(...).iter_torch_batches`` and calls
                  ``EncoderTask.train_epoch`` (``adversarial_step``), no Ray Train;
  (b) pipeline -- ``pipelines.train_encoder`` with 1 Ray Train worker: the same epoch function,
                  fed through ``get_dataset_shard``, plus per-epoch reports and checkpoints;

run one after the other in one process, on the same shards, model, batch size and torch thread
count. Reported: images/s inside each epoch (median over epochs after the first, which warms up
Ray Data) and whole-run images/s, (b)/(a) for each. Target: (b) >= 0.9 x (a).

    python benchmarks/train_overhead.py                       # CPU, tiny AlexNet, 128 px
    python benchmarks/train_overhead.py --epochs 6 --per-class 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import machine_info  # noqa: E402


def bare(cfg, shards: str, epochs: int, threads: int) -> dict:
    from arinv.train.runtime import resolve_device, seed_everything
    from arinv.train.tasks import EncoderTask
    from pipelines.ray_data import read_shards

    torch.set_num_threads(threads)
    seed_everything(0)
    device = resolve_device("cpu" if not cfg.scaling.use_gpu else "cuda")
    task = EncoderTask(cfg)
    task.build(device)
    task.wrap(lambda m: m)
    ds = read_shards(f"{shards}/train", split_transform="train", resolution=cfg.encoder.resolution,
                     crop_scale=(cfg.data.crop_min_scale, 1.0))
    per_epoch, n, t0 = [], 0, time.perf_counter()
    for _ in range(epochs):
        batches = ((b["image"], b["label"]) for b in
                   ds.iter_torch_batches(batch_size=cfg.optim.batch_size, prefetch_batches=2))
        m = task.train_epoch(batches, progress=False)
        per_epoch.append(m["images_per_s"])
        n += m["n"]
    return {"epoch_images_per_s": per_epoch, "run_images_per_s": n / (time.perf_counter() - t0)}


def pipeline(cfg, shards: str, workdir: Path) -> dict:
    from pipelines.train_encoder import train_encoder
    from pipelines.trainer import Launch

    t0 = time.perf_counter()
    r = train_encoder(cfg, Launch(workdir=workdir, register=False, progress=False,
                                  tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}"))
    wall = time.perf_counter() - t0
    state = torch.load(r["checkpoint"], map_location="cpu", weights_only=True)
    hist = state["progress"]["history"]
    in_epochs = sum(h["images"] / h["images_per_s"] for h in hist)
    return {"epoch_images_per_s": [h["images_per_s"] for h in hist],
            "run_images_per_s": sum(h["images"] for h in hist) / wall,
            "data_wait_share": [h["data_wait_share"] for h in hist],
            "wall_s": wall, "outside_epochs_s": wall - in_epochs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-sample-robust")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=96, help="sample crops per class (x8)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in both setups")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import ray

    from arinv.config import EncoderTrainConfig, load_config
    from arinv.data.reader import write_sample_shards

    work = Path(tempfile.mkdtemp(prefix="arinv-train-overhead-"))
    shards = str(write_sample_shards(work / "shards", args.per_class, 8, progress=False))
    cfg = load_config(EncoderTrainConfig, args.preset, [
        f"data.shards={shards}", f"data.train_per_class={args.per_class}",
        "data.val_per_class=8", f"optim.epochs={args.epochs}", "eval.every=0",
        "eval.images=8", "eval.pgd_eps=[0.5]", "eval.pgd_steps=1",
        "scaling.num_workers=1", f"scaling.cpus_per_worker={args.threads}", *args.set])
    info = machine_info(torch.device("cpu"))
    ray.init(address="local", num_cpus=(os.cpu_count() or 1) + args.threads,
             include_dashboard=False, log_to_driver=False)
    a = bare(cfg, shards, args.epochs, args.threads)
    b = pipeline(cfg, shards, work / "pipeline")
    ray.shutdown()

    def med(xs):
        return statistics.median(xs[1:] if len(xs) > 1 else xs)

    rows = {"epoch": (med(a["epoch_images_per_s"]), med(b["epoch_images_per_s"])),
            "run": (a["run_images_per_s"], b["run_images_per_s"])}
    print(f"machine: {info['cpu']} ({info['cpu_cores']} cores), torch {info['torch']}, "
          f"{args.threads} threads; {cfg.encoder.name} {cfg.encoder.resolution} px, batch "
          f"{cfg.optim.batch_size}, PGD-{cfg.attack.steps if cfg.attack else 0}, "
          f"{8 * args.per_class} images x {args.epochs} epochs")
    print(f"{'images/s':>22} | {'bare loop':>10} | {'Ray Train':>10} | ratio | target >= 0.90")
    for name, (x, y) in rows.items():
        label = "in epoch (median, >1)" if name == "epoch" else "whole run (wall)"
        print(f"{label:>22} | {x:10.1f} | {y:10.1f} | {y / x:5.3f} | "
              f"{'PASS' if y / x >= 0.9 else 'FAIL'}")
    print(f"Ray Train run: {b['wall_s']:.1f} s wall, {b['outside_epochs_s']:.1f} s of it outside "
          "the epochs (cluster and worker start, MLflow run, per-epoch checkpoints and reports, "
          "final evaluation)")
    print(f"Ray Train data-wait share per epoch: "
          f"{', '.join(f'{w:.3f}' for w in b['data_wait_share'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "bare": a, "pipeline": b,
                                               "ratios": {k: y / x for k, (x, y) in rows.items()}},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
