#!/usr/bin/env python
"""Images/s and peak memory of the Table A2 evaluation at one scale factor (default L = 10:
224 px images upscaled to 2240 px, AlexNet conv5 encoder + Table A4 generator, untrained
weights: speed and memory do not depend on the values).

Each mode runs in its own fresh process (peak RSS is per process), one after the other, on the
same images:

  (a) bounded   -- ``scale_table`` with ``max_pixels`` = one target image (the default rule:
                   at L = 10 one image per forward pass);
  (b) unbounded -- the same with every image in one forward pass (``max_pixels`` = all), the
                   baseline a naive batched evaluation would be.

It prints images/s (upscaling, encoding, decoding and PSNR / SSIM included), the process's peak
resident memory above what it held before the evaluation, and the ratio of the two peaks.

    python benchmarks/scale_eval.py --images 4 --factor 10
    python benchmarks/scale_eval.py --encoder alexnet_small --generator alexnet_small_conv5 \\
        --images 8 --factor 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--encoder", default="alexnet")
    p.add_argument("--generator", default="alexnet_conv5")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--factor", type=int, default=10, help="the scale factor L")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", default=None, choices=["bounded", "unbounded"],
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rss_mb() -> float:
    """Current resident memory (MB) from /proc (peak: ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> dict:
    import torch

    from arinv.downstream.scale import scale_table
    from arinv.models import create_encoder, create_generator

    torch.manual_seed(0)
    device = torch.device(args.device)
    enc = create_encoder(args.encoder, num_classes=10).to(device).eval()
    gen = create_generator(args.generator).to(device).eval()
    r = enc.input_size
    images = torch.rand(args.images, 3, r, r)
    target_px = (args.factor * r) ** 2
    max_pixels = target_px if args.child == "bounded" else target_px * args.images
    # warm-up at L = 1 (allocator, kernels), then the baseline memory
    scale_table({"c": (enc, gen, args.layer)}, images[:1], r, factors=[1], max_pixels=max_pixels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _rss_mb()
    t0 = time.perf_counter()
    out = scale_table({"c": (enc, gen, args.layer)}, images, r, factors=[args.factor],
                      max_pixels=max_pixels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {"mode": args.child, "images": args.images, "seconds": seconds,
           "images_per_s": args.images / seconds, "rss_before_mb": before,
           "peak_rss_mb": peak, "peak_above_mb": peak - before,
           "psnr": float(out["metrics"]["c"][args.factor]["psnr"].mean())}
    if device.type == "cuda":
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if args.images < 1 or args.factor < 1:
        raise SystemExit("--images and --factor must be >= 1")
    import torch

    from benchmarks.common import emit, machine_info

    results = {}
    for mode in ("bounded", "unbounded"):
        cmd = [sys.executable, __file__, "--child", mode, *[
            a for k in ("encoder", "generator", "layer", "images", "factor", "device")
            for a in (f"--{k}", str(getattr(args, k)))]]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{p.stderr[-3000:]}")
        results[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    info = machine_info(torch.device(args.device))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()
                                  if k in ("cpu", "cpu_cores", "torch_threads", "gpu", "torch")))
    r = 224 if args.encoder == "alexnet" else None
    size = f"{args.factor * r} px" if r else f"L = {args.factor}"
    print(f"{args.encoder} + {args.generator} ({args.layer}), {args.images} images at L = "
          f"{args.factor} ({size}), fp32, {args.device}\n")
    print(f"{'mode':34s} {'images/s':>9s} {'peak RSS above start':>21s}")
    for mode, label in (("bounded", "(a) bounded: one image per pass"),
                        ("unbounded", f"(b) unbounded: {args.images} per pass")):
        m = results[mode]
        print(f"{label:34s} {m['images_per_s']:9.3f} {m['peak_above_mb']:17.0f} MB"
              + (f"   (CUDA peak {m['cuda_peak_mb']:.0f} MB)" if "cuda_peak_mb" in m else ""))
    ratio = results["unbounded"]["peak_above_mb"] / max(results["bounded"]["peak_above_mb"], 1)
    print(f"\npeak memory (b)/(a) {ratio:.2f}x; speed (a)/(b) "
          f"{results['bounded']['images_per_s'] / results['unbounded']['images_per_s']:.2f}x")
    out = {"machine": info, "args": vars(args), "results": results, "memory_ratio": ratio}
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
