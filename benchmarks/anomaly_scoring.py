#!/usr/bin/env python
"""Images/s of Eq. 8 anomaly scoring (Sec. A1), batched against one image at a time.

On the same models and the same images (uint8 on the host, as a data pipeline delivers them;
seeds = dataset indices, so both modes score the same problem), one after the other in one
process, this times

  (a) batched -- ``bare_batched``: ``eq8_scores`` on consecutive batches of ``--batch`` images;
  (b) single  -- ``eq8_scores`` on each image alone;

interleaved round by round (``--rounds``; a round scores every image in each mode), and prints
the median images/s of both, the speed-up (a)/(b) of the medians, and the largest relative
difference between the two modes' scores (they agree to float rounding, not bitwise). Each
mode gets one untimed warm-up call first.

With ``--ray`` it times instead, on the bundled sample photographs written as a shard set
(``--images`` held-out crops) and the same models saved as checkpoints,

  (a) bare    -- ``bare_batched`` in this process on the decoded images;
  (c) Ray Data -- ``pipelines.anomaly.score_shards`` on a local Ray cluster (read, decode,
                 ``map_batches`` with ``Eq8Scorer`` actors, Parquet written), the wall time
                 of the whole job: actor start and model load included;

and prints the ratio (c)/(a) and the largest relative difference of their scores. Defaults: ``alexnet_small`` + ``alexnet_small_conv5`` at 128 px, conv5,
batch 64, 64 images, 100 iterations, fp32, the paper's robust-encoder weights.

    python benchmarks/anomaly_scoring.py --device cpu --images 64 --iters 20 --rounds 3
    python benchmarks/anomaly_scoring.py --ray --images 128 --iters 20 --rounds 2
    python benchmarks/anomaly_scoring.py --encoder alexnet --generator alexnet_conv5 \\
        --images 256 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from arinv.downstream.anomaly import PAPER_ALPHAS, eq8_scores  # noqa: E402
from arinv.models import create_encoder, create_generator  # noqa: E402
from arinv.train.runtime import resolve_device  # noqa: E402
from benchmarks.common import emit, machine_info  # noqa: E402

ALPHAS = PAPER_ALPHAS["robust"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--encoder", default="alexnet_small")
    p.add_argument("--generator", default="alexnet_small_conv5")
    p.add_argument("--layer", default="conv5", help="the encoder tap the generator inverts")
    p.add_argument("--resolution", type=int, default=None,
                   help="square image size in px (default: the encoder's input_size)")
    p.add_argument("--batch", type=int, default=64, help="images per batched eq8_scores call")
    p.add_argument("--images", type=int, default=64, help="images scored by each mode")
    p.add_argument("--iters", type=int, default=100, help="latent-search iterations (paper: 100)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--ray", action="store_true",
                   help="time the Ray Data path (score_shards) against bare batched scoring")
    p.add_argument("--actors", type=int, default=None,
                   help="--ray: Ray Data actors (default: score_shards' own, one per 2 CPUs)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# bare_batched: the in-process baseline, kept free of this script's argument parsing so that a
# Ray Data comparison can import it and score the same images the same way.
# ---------------------------------------------------------------------------------------------
def bare_batched(encoder, generator, images: torch.Tensor, *, layer: str, batch: int,
                 iters: int, alpha_pix: float, alpha_feat: float, optimizer: str = "adam",
                 first_index: int = 0) -> dict:
    """Eq. 8 scores of ``images`` (N x 3 x H x W, uint8 or float, on any device) in consecutive
    batches of ``batch``, image i seeded with its dataset index ``first_index + i``.

    Returns ``scores`` (CPU float32, N), ``seconds`` (wall time of the whole loop, host-to-device
    copies and a final device synchronisation included) and ``images_per_s``."""
    device = next(generator.parameters()).device
    n = images.shape[0]
    _sync(device)
    t0 = time.perf_counter()
    scores = []
    for start in range(0, n, batch):
        chunk = images[start:start + batch]
        seeds = range(first_index + start, first_index + start + chunk.shape[0])
        scores.append(eq8_scores(encoder, generator, chunk, layer, alpha_pix=alpha_pix,
                                 alpha_feat=alpha_feat, iters=iters, seeds=seeds,
                                 optimizer=optimizer)["score"])
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"scores": torch.cat(scores), "seconds": seconds, "images_per_s": n / seconds}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    for name in ("batch", "images", "iters", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    enc = create_encoder(args.encoder, num_classes=10).to(device)
    g = create_generator(args.generator).to(device)
    r = args.resolution or enc.input_size
    if args.ray:
        return ray_mode(args, enc, g, r, device)
    images = torch.randint(0, 256, (args.images, 3, r, r), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    common = dict(layer=args.layer, iters=args.iters, optimizer=args.optimizer, **ALPHAS)
    info = machine_info(device)

    # warm-up: one call per mode (kernel selection, allocator), untimed
    bare_batched(enc, g, images[:args.batch], batch=args.batch, **{**common, "iters": 1})
    bare_batched(enc, g, images[:1], batch=1, **{**common, "iters": 1})

    rates = {"batched": [], "single": []}
    for _ in range(args.rounds):
        batched = bare_batched(enc, g, images, batch=args.batch, **common)
        single = bare_batched(enc, g, images, batch=1, **common)
        rates["batched"].append(batched["images_per_s"])
        rates["single"].append(single["images_per_s"])
    med = {k: statistics.median(v) for k, v in rates.items()}
    rel = ((batched["scores"] - single["scores"]).abs() / single["scores"].abs()).max().item()
    speedup = med["batched"] / med["single"]

    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()
                                  if k in ("cpu", "cpu_cores", "torch_threads", "gpu", "torch")))
    precision = "fp32" + (f" (cuDNN TF32 {torch.backends.cudnn.allow_tf32})"
                          if device.type == "cuda" else "")
    print(f"models {args.encoder} + {args.generator} ({args.layer}), {r} px, {args.images} images, "
          f"{args.iters} iterations, {args.optimizer}, {precision}, {args.rounds} rounds\n")
    print(f"{'mode':24s} {'median images/s':>16s}   per round")
    for key, label in (("batched", f"(a) batched, batch {args.batch}"),
                       ("single", "(b) one image at a time")):
        print(f"{label:24s} {med[key]:16.2f}   {', '.join(f'{v:.2f}' for v in rates[key])}")
    print(f"\nspeed-up (a)/(b) {speedup:.2f}x; max relative score difference {rel:.2e}")
    result = {"machine": info, "args": vars(args), "resolution": r, "precision": precision,
              "images_per_s": rates, "median_images_per_s": med,
              "speedup": speedup, "max_rel_score_diff": rel}
    emit(result, args.json)
    return 0


def ray_mode(args, enc, g, r, device) -> int:
    """(a) bare batched against (c) the Ray Data path, on the same shard set and models."""
    import os
    import tempfile

    import ray

    from arinv.checkpoint import save_checkpoint
    from arinv.config import EncoderTrainConfig, GeneratorTrainConfig, ScoringConfig, to_dict
    from arinv.data.reader import ShardBatches, write_sample_shards
    from pipelines.anomaly import read_scores, score_shards

    if device.type == "cuda":
        raise SystemExit("--ray times the CPU path here (use_gpu actors need a GPU cluster)")
    tmp = Path(tempfile.mkdtemp(prefix="arinv-bench-anomaly-"))
    per_class = -(-args.images // 8)  # the sample set has 8 classes
    val = f"{write_sample_shards(tmp / 'shards', 1, per_class, progress=False)}/val"
    ecfg = EncoderTrainConfig(name="bench-encoder")
    ecfg.encoder.name = args.encoder
    enc_file = save_checkpoint(tmp / "encoder.pt", kind="encoder", arch=enc.arch,
                               modules={"model": enc}, progress={"epoch": 0, "history": []},
                               config=to_dict(ecfg))
    gcfg = GeneratorTrainConfig(name="bench-generator", resolution=r)
    gcfg.encoder.name, gcfg.encoder.layer, gcfg.generator.name = (args.encoder, args.layer,
                                                                  args.generator)
    gen_file = save_checkpoint(tmp / "generator.pt", kind="generator",
                               arch={"generator": g.arch, "discriminator": None,
                                     "encoder": enc.arch},
                               modules={"generator": g}, progress={"epoch": 0, "history": []},
                               config=to_dict(gcfg))
    images = torch.cat([x for x, _ in ShardBatches(val, 64, resolution=r, train=False)])
    n = images.shape[0]
    common = dict(layer=args.layer, iters=args.iters, optimizer=args.optimizer, **ALPHAS)
    scoring = ScoringConfig(iters=args.iters, batch_size=args.batch, optimizer=args.optimizer,
                            actors=args.actors)
    bare_batched(enc, g, images[:args.batch], batch=args.batch, **{**common, "iters": 1})
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rates = {"bare": [], "ray": []}
    try:
        for i in range(args.rounds):
            bare = bare_batched(enc, g, images, batch=args.batch, **common)
            rates["bare"].append(bare["images_per_s"])
            res = score_shards(val, str(tmp / "scores"), encoder_ref=str(enc_file),
                               generator_ref=str(gen_file), layer=args.layer, resolution=r,
                               scoring=scoring, progress=False, **ALPHAS)
            rates["ray"].append(res["images_per_s"])
    finally:
        ray.shutdown()
    s = torch.from_numpy(read_scores(str(tmp / "scores"))["score"]).float()
    rel = ((s - bare["scores"]).abs() / bare["scores"].abs()).max().item()
    med = {k: statistics.median(v) for k, v in rates.items()}
    info = machine_info(device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()
                                  if k in ("cpu", "cpu_cores", "torch_threads", "torch")))
    print(f"models {args.encoder} + {args.generator} ({args.layer}), {r} px, {n} sample crops, "
          f"{args.iters} iterations, batch {args.batch}, {args.optimizer}, fp32, "
          f"{res['actors']} Ray Data actor(s), {args.rounds} rounds\n")
    print(f"{'mode':36s} {'median images/s':>16s}   per round")
    for key, label in (("bare", "(a) bare batched (this process)"),
                       ("ray", "(c) Ray Data score_shards (whole job)")):
        print(f"{label:36s} {med[key]:16.2f}   {', '.join(f'{v:.2f}' for v in rates[key])}")
    ratio = med["ray"] / med["bare"]
    print(f"\nratio (c)/(a) {ratio:.2f}x; max relative score difference {rel:.2e}")
    result = {"machine": info, "args": vars(args), "resolution": r, "images": n,
              "images_per_s": rates, "median_images_per_s": med, "ratio": ratio,
              "max_rel_score_diff": rel, "actors": res["actors"]}
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
