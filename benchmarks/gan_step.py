#!/usr/bin/env python
"""Throughput of one GAN feature-inversion step, and the share of it spent in the frozen encoder.

On one fixed batch, interleaved round by round (medians), this times

  (a) gan_step        -- ``arinv.train.gan.gan_step``: encoder features of the real batch, one
                         discriminator update, one generator update (pixel + feature + GAN losses);
  (b) encoder work    -- what the encoder does inside (a), alone: a no-grad forward of the real
                         batch plus a forward and input-gradient backward of a generated batch
                         (the feature loss's path);

  (c) the baseline    -- (a) with models and batch in the default NCHW layout, where (a) runs
                         channels-last (``runtime.channels_last``, the presets' default);

and prints images/s of (a) and (c), the channels-last speed-up t(c) / t(a) and the encoder
share t(b) / t(a). Defaults: on CUDA the paper's ``alexnet_conv5`` generator + discriminator on
AlexNet at 224 px, batch 128, bf16; on CPU their quarter-width twins on ``alexnet_small`` at
128 px, batch 32 (--no-gan: the tiny-gray-generator preset's weights, gray output and batch 16).

    python benchmarks/gan_step.py --device cpu
    python benchmarks/gan_step.py --device cpu --no-gan      # the CPU main job's generator step
    python benchmarks/gan_step.py --no-amp --iters 20 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from common import machine_info

from arinv.losses import feature_loss
from arinv.models import create_discriminator, create_encoder, create_generator
from arinv.config import GeneratorTrainConfig, LossConfig, load_config
from arinv.train.gan import build_gan_optimizers, freeze, gan_step
from arinv.train.runtime import autocast_for, prepare_model, resolve_device


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--small", action="store_true", help="use the quarter-width models on CUDA too")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 128 CUDA; 32 CPU, or the main job's 16 with --no-gan")
    p.add_argument("--iters", type=int, default=None, help="timed rounds (default: 20 CUDA, 8 CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC models and batch, timed against the NCHW step (the baseline)")
    p.add_argument("--gan", action=argparse.BooleanOptionalAction, default=True,
                   help="with the discriminator and GAN loss (the paper's recipe); --no-gan: "
                        "the CPU main job's step, read from the tiny-gray-generator preset "
                        "(its loss weights, tied gray output, and on CPU its batch)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    small = args.small or not cuda
    enc_name, g_name = ("alexnet_small", "alexnet_small_conv5") if small else ("alexnet", "alexnet_conv5")
    main_job = None if args.gan else load_config(GeneratorTrainConfig, "tiny-gray-generator")
    batch = args.batch_size or (128 if cuda else main_job.optim.batch_size if main_job else 32)
    iters = args.iters or (20 if cuda else 8)
    if cuda:
        torch.backends.cudnn.benchmark = True
    amp = autocast_for(device, args.amp)
    weights = main_job.loss if main_job else LossConfig()
    gray = bool(main_job and main_job.generator.gray)
    torch.manual_seed(0)
    enc0, g0 = create_encoder(enc_name), create_generator(g_name, gray=gray)
    d0 = create_discriminator(g_name)
    r = enc0.input_size
    x0 = torch.rand(batch, 3, r, r)

    def build(cl: bool):
        """The step on its own copies of the models, batch in ``cl`` (channels-last) layout."""
        enc = freeze(prepare_model(copy.deepcopy(enc0), device, cl))
        g = prepare_model(copy.deepcopy(g0), device, cl)
        d = prepare_model(copy.deepcopy(d0), device, cl) if args.gan else None
        opt_g, opt_d = build_gan_optimizers(g, d)
        x = x0.to(device)
        x = x.contiguous(memory_format=torch.channels_last) if cl else x
        x_hat = torch.rand_like(x)

        def step():
            gan_step(g, enc, x, layer="conv5", opt_g=opt_g, weights=weights, discriminator=d,
                     opt_d=opt_d, autocast=amp)

        def encoder_work():
            with torch.no_grad(), amp:
                f = enc.features(x, "conv5")
            xh = x_hat.detach().requires_grad_(True)
            with amp:
                loss = feature_loss(enc.features(xh, "conv5").float(), f.float())
            torch.autograd.grad(loss, xh)
        return step, encoder_work

    step, encoder_work = build(args.channels_last)
    layout = "channels-last" if args.channels_last else "NCHW"
    runs = {f"gan_step, {layout}": step, "encoder work inside it": encoder_work}
    if args.channels_last:  # the baseline: the same step with the default NCHW layout
        runs["gan_step, NCHW (baseline)"] = build(False)[0]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    times = {k: [] for k in runs}
    for i in range(args.warmup + iters):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    t_step, t_enc = med[f"gan_step, {layout}"], med["encoder work inside it"]

    info = machine_info(device)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()
                                  if k in ("cpu", "cpu_cores", "gpu", "torch")))
    losses = ("pixel + feature + GAN (G and D updates)" if args.gan else
              f"pixel {weights.pix:g} + feature {weights.feat:g}, no D, gray G (tiny-gray-generator)")
    print(f"models {enc_name} + {g_name}, {r} px, batch {batch}, {losses}, "
          f"bf16 {args.amp and cuda}, {iters} rounds\n")
    print(f"{'measurement':28s} {'ms':>9s} {'images/s':>10s}")
    for k in runs:
        print(f"{k:28s} {1e3 * med[k]:9.2f} {batch / med[k]:10.1f}")
    print(f"\ngan_step throughput {batch / t_step:.1f} images/s; "
          f"encoder share {100 * t_enc / t_step:.1f}% of the step")
    speedup = None
    if args.channels_last:
        speedup = med["gan_step, NCHW (baseline)"] / t_step
        print(f"channels-last speed-up over NCHW: {speedup:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "encoder": enc_name, "generator": g_name, "batch": batch,
            "resolution": r, "amp": args.amp and cuda, "gan": args.gan, "gray": gray,
            "channels_last": args.channels_last,
            "median_ms": {k: 1e3 * v for k, v in med.items()},
            "images_per_s": batch / t_step, "encoder_share": t_enc / t_step,
            "channels_last_speedup": speedup}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
