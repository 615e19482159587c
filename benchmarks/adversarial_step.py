#!/usr/bin/env python
"""How much does PGD-7 adversarial training cost next to its parts?

On one model and one fixed batch, interleaved round by round, this times

  (a) standard step   -- ``standard_step``: forward, backward, SGD update;
  (b) attack iter     -- the issue's unit: a forward and ``torch.autograd.grad(loss, x)`` (the
                         gradient w.r.t. the input only), nothing else;
  (b') pgd(steps=1)   -- one PGD iteration as the library runs it (eval mode, forward, input
                         gradient, step, projection, plus per-call set-up), for information;
  (c) PGD-7 step      -- ``adversarial_step`` with AttackConfig(norm="l2", eps=3.0, steps=7,
                         step_size=0.5): 7 attack iterations then one standard step;

and checks the target

  ratio = t(c) / (7 * t(b) + t(a)) <= 1.10

i.e. an adversarial step costs no more than 10% over the arithmetic it must do: the step and
projection, the mode switches and any copies all have to fit in that 10%. (The ratio with (b')
in place of (b) is printed for information.) Times are medians over ``--iters`` rounds, with
``torch.cuda.synchronize()`` around every timed call on CUDA.

With channels-last on (the default, as ``runtime.channels_last`` in every preset, on CPU and
CUDA alike), (a) and (c) are also timed on an NCHW copy of the same model and batch, in the same
rounds, and the channels-last speed-up over that baseline is printed.

Needs ``arinv`` importable (``pip install -e .``, or ``PYTHONPATH=.`` from the repo root).
Defaults: on CUDA, ``alexnet`` at 224 px, batch 256, bf16 autocast, channels-last; on CPU,
``alexnet_small`` at 128 px, batch 64, fp32, channels-last.

    python benchmarks/adversarial_step.py --device cpu
    python benchmarks/adversarial_step.py --no-amp --iters 30
    python benchmarks/adversarial_step.py --model resnet18_cifar --batch-size 512 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine_info

from arinv.attacks import eval_mode, pgd
from arinv.config import AttackConfig
from arinv.models import create_encoder, list_encoders
from arinv.train.runtime import autocast_for, prepare_model, resolve_device
from arinv.train.steps import adversarial_step, standard_step

ATTACK = AttackConfig(norm="l2", eps=3.0, steps=7, step_size=0.5)
TARGET = 1.10


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: ...)' only where the default is a fixed value, not device-dependent."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Times a standard step, one attack iteration and "
        "a PGD-7 adversarial step on the same model and batch, and checks "
        f"t(PGD-7 step) / (7 t(attack iter) + t(standard step)) <= {TARGET:.2f}.",
        formatter_class=_Help,
    )
    p.add_argument("--model", choices=list_encoders(), default=None,
                   help="encoder to time (default: alexnet on CUDA, alexnet_small on CPU)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier head size")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: 256 on CUDA, 64 on CPU)")
    p.add_argument("--resolution", type=int, default=None,
                   help="square input size in px (default: the model's input_size, e.g. "
                        "224 for alexnet, 128 for alexnet_small)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed rounds; each round runs every measurement once "
                        "(default: 50 on CUDA, 10 on CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first (default: 10 on CUDA, 2 on CPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto picks cuda when a GPU is visible")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast (CUDA only; CPU always runs fp32)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format for model and batch, timed against an "
                        "NCHW copy of the same model and batch (the baseline)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="SGD learning rate of the timed steps (small, so weights stay sane)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the random batch")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model_name = args.model or ("alexnet" if cuda else "alexnet_small")
    batch = args.batch_size or (256 if cuda else 64)
    iters = args.iters if args.iters is not None else (50 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    if iters < 1 or warmup < 0 or batch < 1:
        raise SystemExit("--iters and --batch-size must be >= 1, --warmup >= 0")

    torch.manual_seed(args.seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
    channels_last = args.channels_last
    model = create_encoder(model_name, num_classes=args.num_classes)
    baseline = copy.deepcopy(model) if channels_last else None  # same weights, NCHW
    model = prepare_model(model, device, channels_last)
    res = args.resolution or model.input_size
    amp = args.amp and cuda
    autocast = autocast_for(device, amp)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    x = torch.rand(batch, 3, res, res, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (batch,), device=device)

    def bare_grad():
        with eval_mode(model):
            xg = x.detach().requires_grad_(True)
            with autocast:
                loss = F.cross_entropy(model(xg), y)
            (g,) = torch.autograd.grad(loss, xg)
        return g

    runs = {
        "standard step": lambda: standard_step(model, opt, x, y, autocast=autocast),
        "pgd(steps=1) call": lambda: pgd(
            model, x, y, eps=ATTACK.eps, step_size=ATTACK.effective_step_size, steps=1,
            norm=ATTACK.norm, random_start=False, autocast=autocast),
        "attack iter (fwd + input grad)": bare_grad,
        f"PGD-{ATTACK.steps} adversarial step": lambda: adversarial_step(
            model, opt, x, y, ATTACK, autocast=autocast),
    }
    if baseline is not None:  # the same two steps in the default NCHW layout
        base = prepare_model(baseline, device, False)
        base_opt = torch.optim.SGD(base.parameters(), lr=args.lr, momentum=0.9)
        xb = x.contiguous()
        runs["standard step, NCHW"] = lambda: standard_step(base, base_opt, xb, y,
                                                            autocast=autocast)
        runs[f"PGD-{ATTACK.steps} step, NCHW"] = lambda: adversarial_step(
            base, base_opt, xb, y, ATTACK, autocast=autocast)

    info = machine_info(device)
    print("machine")
    for k, v in info.items():
        if isinstance(v, float):
            v = f"{v:.2f}"
        elif isinstance(v, list):
            v = " ".join(f"{e:.2f}" for e in v)
        print(f"  {k:22s} {v}")
    print(f"config\n  model {model_name}  resolution {res}  batch {batch}  "
          f"amp(bf16) {amp}  channels_last {channels_last}  iters {iters}  warmup {warmup}\n"
          f"  attack {ATTACK.norm} eps={ATTACK.eps} steps={ATTACK.steps} "
          f"step_size={ATTACK.effective_step_size} random_start={ATTACK.random_start}")
    busy = info["cpu_busy_before_start"]
    if busy is not None and busy > 0.25:
        print(f"WARNING: other processes kept the CPUs {100 * busy:.0f}% busy just before the "
              "start; timings will be slow and noisy (CPU timings most of all)")
    sys.stdout.flush()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {k: [] for k in runs}
    t_start = time.perf_counter()
    for r in range(warmup + iters):  # interleaved, so drift in machine load hits all alike
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start

    med = {k: statistics.median(v) for k, v in times.items()}
    names = list(runs)
    std_t, call_t, atk_t, adv_t = (med[k] for k in names[:4])
    k = ATTACK.steps
    ratio = adv_t / (k * atk_t + std_t)
    ratio_call = adv_t / (k * call_t + std_t)
    passed = ratio <= TARGET

    print(f"\n{'measurement':34s} {'ms/step':>10s} {'min ms':>10s} {'max ms':>10s} "
          f"{'images/s':>10s}")
    for name in names:
        v = times[name]
        print(f"{name:34s} {1e3 * med[name]:10.2f} {1e3 * min(v):10.2f} {1e3 * max(v):10.2f} "
              f"{batch / med[name]:10.1f}")
    print(f"\nsum of parts: {k} x attack iter + standard step = {1e3 * (k * atk_t + std_t):.2f} ms; "
          f"with pgd(steps=1) calls: {1e3 * (k * call_t + std_t):.2f} ms")
    print(f"info: ratio with pgd(steps=1) calls = {ratio_call:.3f}")
    speedup = None
    if baseline is not None:
        speedup = {"standard step": med["standard step, NCHW"] / std_t,
                   f"PGD-{k} step": med[f"PGD-{k} step, NCHW"] / adv_t}
        print("channels-last speed-up over NCHW: " + ", ".join(
            f"{name} {v:.2f}x" for name, v in speedup.items()))
    print(f"ratio = t(PGD-{k} step) / ({k}*t(attack iter) + t(standard step)) = {ratio:.3f}  "
          f"(target <= {TARGET:.2f})  {'PASS' if passed else 'FAIL'}")
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = list(os.getloadavg())
        print(f"load average start {info['loadavg_start'][0]:.2f}, end {info['loadavg_end'][0]:.2f}"
              f" ({info['cpu_cores']} cores); timed wall {wall:.1f} s")

    if args.json:
        out = {
            "machine": info,
            "config": {"model": model_name, "resolution": res, "batch_size": batch, "amp": amp,
                       "channels_last": channels_last, "iters": iters, "warmup": warmup,
                       "lr": args.lr, "num_classes": args.num_classes,
                       "attack": {"norm": ATTACK.norm, "eps": ATTACK.eps, "steps": ATTACK.steps,
                                  "step_size": ATTACK.effective_step_size}},
            "results": {name: {"median_ms": 1e3 * med[name], "images_per_s": batch / med[name],
                               "times_ms": [1e3 * t for t in times[name]]} for name in names},
            "ratio": ratio, "ratio_pgd_call": ratio_call, "target": TARGET, "pass": passed,
            "channels_last_speedup": speedup,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
