#!/usr/bin/env python
"""Images/s of style transfer (Sec. A3.1) and denoising (Sec. A3.2), batched against one image
at a time, in one run on the same models and images.

  stylize  ``arinv.downstream.stylize`` with the paper's three levels (conv5 -> conv2 -> conv1,
           Tables A4 / A7 / A6 generators on one AlexNet), ``--images`` content images of
           ``--style-size`` px, each with its own style image of the same size:
           (a) all in one call, (b) one call per image.
  denoise  ``arinv.downstream.denoise`` with the Tables A8 / A9 wavelet autoencoder on
           ``--images`` noisy images of ``--denoise-size`` px: (a) one call, (b) one per image.

Random weights: the cost does not depend on them. Modes alternate round by round
(``--rounds``) after one untimed warm-up each; the medians are printed side by side with the
ratio (a)/(b) and the largest difference between the two modes' outputs.

    python benchmarks/style_denoise.py --device cpu
    python benchmarks/style_denoise.py --device cuda --images 16 --style-size 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from arinv.downstream import add_noise, denoise, stylize  # noqa: E402
from arinv.models import create_encoder, create_generator  # noqa: E402
from arinv.models.denoiser import WaveletAutoencoder  # noqa: E402
from arinv.train.runtime import resolve_device  # noqa: E402
from benchmarks.common import emit, machine_info  # noqa: E402


def _timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    if out.device.type == "cuda":
        torch.cuda.synchronize(out.device)
    return time.perf_counter() - start, out


def _compare(name: str, batched, single, n: int, rounds: int) -> dict:
    batched(), single()  # warm-up
    times = {"batched": [], "single": []}
    outs = {}
    for _ in range(rounds):
        for mode, fn in (("batched", batched), ("single", single)):
            t, outs[mode] = _timed(fn)
            times[mode].append(t)
    rate = {m: n / statistics.median(ts) for m, ts in times.items()}
    diff = float((outs["batched"] - outs["single"]).abs().max())
    print(f"{name:8s} (a) batched {rate['batched']:8.3f} img/s   (b) one at a time "
          f"{rate['single']:8.3f} img/s   (a)/(b) {rate['batched'] / rate['single']:5.2f}x   "
          f"max |a - b| {diff:.2e}")
    return {"batched_img_s": rate["batched"], "single_img_s": rate["single"],
            "speedup": rate["batched"] / rate["single"], "max_abs_diff": diff,
            "seconds": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--style-size", type=int, default=256, help="content and style side, px")
    p.add_argument("--denoise-size", type=int, default=512, help="noisy image side, px")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["stylize", "denoise"], default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    result = {"machine": machine_info(device), "args": vars(args)}
    alexnet = create_encoder("alexnet", num_classes=1000).to(device).eval()
    g = torch.Generator().manual_seed(0)
    n = args.images
    if args.only != "denoise":
        pairs = {lv: (alexnet, create_generator(f"alexnet_{lv}").to(device).eval())
                 for lv in ("conv5", "conv2", "conv1")}
        s = args.style_size
        content = torch.rand(n, 3, s, s, generator=g)
        styles = [torch.rand(3, s, s, generator=g) for _ in range(n)]
        result["stylize"] = _compare(
            f"stylize {s} px", lambda: stylize(content, styles, pairs),
            lambda: torch.cat([stylize(content[i:i + 1], styles[i:i + 1], pairs)
                               for i in range(n)]), n, args.rounds)
    if args.only != "stylize":
        model = WaveletAutoencoder.from_alexnet(alexnet).to(device).eval()
        d = args.denoise_size
        noisy = add_noise(torch.rand(n, 3, d, d, generator=g))
        result["denoise"] = _compare(
            f"denoise {d} px", lambda: denoise(noisy, model),
            lambda: torch.cat([denoise(noisy[i:i + 1], model) for i in range(n)]), n,
            args.rounds)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
