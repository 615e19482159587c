#!/usr/bin/env python
"""Does the main job show the paper's two effects on every seed, and by how much on average?

Runs ``arinv quickstart`` once per seed (one after the other, each in its own workdir
``WORKDIR/s<seed>`` with its own local Ray cluster and sqlite MLflow store), then prints one row
per seed (the robustness gap at the largest ε, the PSNR and SSIM gaps between the robust and the
standard autoencoder, whether each effect holds by the report's criteria, the wall time) and,
under it, the mean and standard error of each gap over the seeds and how many seeds show each
effect. The criteria are the report's own (``pipelines.quickstart.effects``): the standard
encoder keeps at most half its clean accuracy and the robust one is 0.15 above it; the robust
autoencoder's PSNR and SSIM are above the standard one's.

A seed whose workdir already holds a finished run (``results.json``) is read back, not rerun
(its time is then shown as "reused"). ``--rerun`` launches the quickstart there again, which
reuses its finished stages and resumes unfinished ones; delete a seed's folder to train it
from scratch. Each seed takes 8-10 minutes on a 2-vCPU machine with nothing else running.

    python benchmarks/main_job_seeds.py --seeds 0 1 2 --workdir /tmp/seeds
    python benchmarks/main_job_seeds.py --seeds 6 7 8 --workdir /tmp/seeds --json seeds.json
    python benchmarks/main_job_seeds.py --seeds 0 1 --workdir /tmp/seeds32 \\
        --set generators.optim.epochs=32 --set generators.optim.lr_step_epochs=24
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipelines.quickstart import effects


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="runtime.seed of each run (default: 0 1 2)")
    p.add_argument("--workdir", type=Path, default=Path("main-job-seeds"),
                   help="one folder per seed is made under it (default: ./main-job-seeds)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="passed to every run's `arinv quickstart --set`")
    p.add_argument("--rerun", action="store_true",
                   help="launch the quickstart again where results.json exists (it reuses finished "
                        "stages; delete the folder to retrain)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def run_seed(seed: int, workdir: Path, overrides: list[str]) -> float:
    """One quickstart in its own process (its own Ray cluster); its wall time in seconds. Its
    terminal output goes to ``workdir/../s<seed>.out``."""
    cmd = [sys.executable, "-m", "pipelines.cli", "quickstart", "--workdir", str(workdir),
           "--no-progress", "--set", f"runtime.seed={seed}"]
    for o in overrides:
        cmd += ["--set", o]
    out = workdir.parent / f"{workdir.name}.out"
    print(f"seed {seed}: {' '.join(cmd[1:])} (output: {out})", flush=True)
    t0 = time.perf_counter()
    with out.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"seed {seed}: the quickstart exited with {rc}; see {out}")
    return time.perf_counter() - t0


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def main(argv=None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        wd = (args.workdir / f"s{seed}").resolve()
        done = (wd / "results.json").is_file()
        seconds = None if done and not args.rerun else run_seed(seed, wd, args.overrides)
        results = json.loads((wd / "results.json").read_text())
        e = effects(results["encoders"], results["generators"])
        rows.append({"seed": seed, "workdir": str(wd), "seconds": seconds, **e})

    print(f"\n{'seed':>4s} {'gap@eps':>8s} {'robust?':>7s} {'dPSNR dB':>9s} {'dSSIM':>7s} "
          f"{'recon?':>6s} {'PSNR std/rob':>13s} {'SSIM std/rob':>13s} {'time':>8s}")
    for r in rows:
        t = "reused" if r["seconds"] is None else f"{r['seconds'] / 60:.1f} min"
        print(f"{r['seed']:4d} {r['gap']:+8.3f} {'yes' if r['robust_shown'] else 'NO':>7s} "
              f"{r['d_psnr']:+9.2f} {r['d_ssim']:+7.3f} "
              f"{'yes' if r['reconstruction_shown'] else 'NO':>6s} "
              f"{r['psnr_standard']:6.2f}/{r['psnr_robust']:<6.2f} "
              f"{r['ssim_standard']:6.3f}/{r['ssim_robust']:<6.3f} {t:>8s}")
    n = len(rows)
    print(f"\nover {n} seed(s), mean ± standard error:")
    for key, label, fmt in (("gap", f"robustness gap at ε = {rows[0]['eps']:g}", "+.3f"),
                            ("d_psnr", "PSNR gap (dB)", "+.2f"), ("d_ssim", "SSIM gap", "+.4f")):
        m, se = mean_se([r[key] for r in rows])
        print(f"  {label:32s} {m:{fmt}} ± {se:.4f}  (min {min(r[key] for r in rows):{fmt}})")
    print(f"  robustness effect on {sum(r['robust_shown'] for r in rows)} of {n} seeds; "
          f"reconstruction effect (PSNR and SSIM) on {sum(r['reconstruction_shown'] for r in rows)}"
          f" of {n}; PSNR alone on {sum(r['d_psnr'] > 0 for r in rows)} of {n}")
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
