"""What a sweep leaves behind: Table A3 (markdown + CSV, the paper's layout: one column per
eps), one CSV row per trial, plots, the trials' reconstructions side by side, and for a
loss-weight search the best weights as a preset file."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from arinv.config import SWEEP_METRICS, SweepConfig, resolve_preset
from arinv.experiments import table_a3
from arinv.experiments.table_a3 import _fmt
from pipelines.console import say

TABLE_MD, TABLE_CSV, TRIALS_CSV = "table_a3.md", "table_a3.csv", "trials.csv"
SEARCH_MD, PLOT, GRIDS = "search.md", "sweep.png", "reconstructions.png"

def best(sw: SweepConfig, rows: list) -> dict | None:
    """The complete trial with the best ``select`` (eps sweep) / ``search.metric`` value."""
    metric = sw.select if sw.search is None else sw.search.metric
    sign = 1 if SWEEP_METRICS[metric] == "max" else -1
    done = [r for r in rows if r["status"] == "complete" and not math.isnan(r[metric])]
    return max(done, key=lambda r: sign * r[metric]) if done else None


def search_table(rows: list, metric: str) -> str:
    """Markdown: one row per loss-weight trial, best first."""
    sign = 1 if SWEEP_METRICS[metric] == "max" else -1
    key = (lambda r: -sign * r[metric] if not math.isnan(r[metric]) else math.inf)
    lam = sorted({k for r in rows for k in r if k.startswith("lambda_")})
    md = ["| trial | " + " | ".join(f"λ{k[7:]}" for k in lam)
          + " | epochs | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ | status |",
          "|---|" + "---|" * (len(lam) + 5)]
    for r in sorted(rows, key=key):
        md.append(f"| {r['trial']} | " + " | ".join(f"{r.get(k, math.nan):.3g}" for k in lam)
                  + f" | {r['epochs']} | {_fmt(r['psnr'], '.3f')} | {_fmt(r['ssim'], '.4f')} | "
                  f"{_fmt(r['lpips'], '.4f')} | {r['status']} |")
    return "\n".join(md) + "\n"


FIRST = ["trial", "eps", "attack_eps", "lambda_pix", "lambda_feat", "lambda_gan", "standard_acc",
         "pgd_acc", "psnr", "ssim", "lpips", "epochs", "status"]


def trials_csv(rows: list) -> str:
    keys = {k for r in rows for k in r}
    cols = [k for k in FIRST if k in keys] + sorted(keys - set(FIRST))
    rows = sorted(rows, key=lambda r: (r.get("eps", 0.0), r["trial"] or ""))
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=cols)
    out.writeheader()
    for r in rows:
        out.writerow(r)
    return buf.getvalue()


def write(workdir: Path, sw: SweepConfig, rows: list, tracking_uri: str) -> dict:
    """Write the tables, the plot and the reconstructions; returns their paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    files = []
    if sw.search is None:
        md, table = table_a3.table(rows)
        (workdir / TABLE_CSV).write_text(table)
        (workdir / TABLE_MD).write_text(
            f"# Sweep {sw.name}: reconstruction against robustness (Table A3 layout)\n\n"
            f"Encoder preset `{sw.encoder}`, generator preset `{sw.generator}`. Accuracies on "
            "held-out images; PGD at the radius in the third row.\n\n" + md
            + f"\n![PSNR, SSIM, LPIPS and accuracies against ε]({PLOT})\n\n"
            f"![held-out reconstructions, one block per ε]({GRIDS})\n\n"
            "Each block of the reconstructions: held-out inputs, the generator's reconstructions"
            " and, when the generator preset sets ri_steps, the RI baseline (optimisation from "
            "noise). The inputs shown can differ between trials (the held-out stream's order is "
            "not fixed); the metrics cover the same held-out images.\n")
        files += [workdir / TABLE_MD, workdir / TABLE_CSV]
        _plot_eps(workdir / PLOT, rows)
    else:
        (workdir / SEARCH_MD).write_text(
            f"# Loss-weight search {sw.name}\n\nGenerator preset `{sw.generator}`, encoder "
            f"`{sw.search.encoder}`; ASHA on held-out {sw.search.metric}.\n\n"
            + search_table(rows, sw.search.metric) + f"\n![metric against weights]({PLOT})\n")
        files.append(workdir / SEARCH_MD)
        _plot_search(workdir / PLOT, rows, sw.search.metric)
    (workdir / TRIALS_CSV).write_text(trials_csv(rows))
    files += [workdir / TRIALS_CSV, workdir / PLOT]
    grids = _grids(workdir / GRIDS, rows, tracking_uri, sw)
    if grids:
        files.append(grids)
    return {"files": [str(f) for f in files], "workdir": str(workdir)}


def write_preset(sw: SweepConfig, row: dict, workdir: Path) -> Path:
    """The best weights as a generator preset: ``extends`` the searched preset, with the
    sweep's generator overrides and the winning ``loss`` weights."""
    import yaml

    from arinv.config import apply_override

    s = sw.search
    path = Path(s.preset_out) if s.preset_out else workdir / f"{sw.name}-best.yaml"
    base = resolve_preset(sw.generator)
    data: dict = {"extends": sw.generator if base.stem == sw.generator else str(base.resolve())}
    for item in sw.generator_set:
        apply_override(data, item)
    if sw.shards:
        apply_override(data, f"data.shards={sw.shards}")
    data.setdefault("encoder", {})["checkpoint"] = s.encoder
    data["name"] = f"{sw.name}-best"
    loss = data.setdefault("loss", {})
    for k in ("pix", "feat", "gan"):
        if f"lambda_{k}" in row:
            loss[k] = float(row[f"lambda_{k}"])
    header = (f"# Best loss weights of the search {sw.name!r}: trial {row['trial']}, held-out "
              f"PSNR {row['psnr']:.3f} dB, SSIM {row['ssim']:.4f}, LPIPS "
              f"{_fmt(row['lpips'], '.4f')} after {row['epochs']} epochs.\n"
              f"# Use: arinv train-generator --config {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_eps(path: Path, rows: list) -> None:
    plt = _plt()
    rows = sorted(rows, key=lambda r: r["eps"])
    xs = [r["eps"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=110)
    axes[0].plot(xs, [r["psnr"] for r in rows], "o-")
    axes[0].set_ylabel("PSNR (dB) ↑")
    axes[1].plot(xs, [r["ssim"] for r in rows], "o-", label="SSIM ↑")
    axes[1].plot(xs, [r["lpips"] for r in rows], "s--", label="LPIPS ↓")
    axes[1].legend()
    axes[2].plot(xs, [100 * r["standard_acc"] for r in rows], "o-", label="standard")
    axes[2].plot(xs, [100 * r["pgd_acc"] for r in rows], "s--", label="ℓ2 PGD (radius of the table)")
    axes[2].set_ylabel("accuracy (%)")
    axes[2].legend()
    for ax, title in zip(axes, ("Reconstruction", "Similarity", "Accuracy")):
        ax.set_xlabel("training ε (ℓ2 PGD)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_search(path: Path, rows: list, metric: str) -> None:
    plt = _plt()
    lam = sorted({k for r in rows for k in r if k.startswith("lambda_")})
    fig, axes = plt.subplots(1, max(1, len(lam)), figsize=(4 * max(1, len(lam)), 3.4), dpi=110,
                             squeeze=False)
    for ax, k in zip(axes[0], lam):
        for done, marker, label in ((True, "o", "ran all epochs"), (False, "x", "stopped early")):
            pts = [(r[k], r[metric]) for r in rows
                   if (r["status"] == "complete") == done and not math.isnan(r[metric])]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=label)
        ax.set_xscale("log")
        ax.set_xlabel(f"λ{k[7:]}")
        ax.set_ylabel(f"held-out {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _grids(path: Path, rows: list, tracking_uri: str, sw: SweepConfig) -> Path | None:
    """Each complete trial's held-out reconstruction grid (logged to its MLflow run), stacked
    with its label: one look shows what eps or the weights do to the images."""
    import mlflow
    from PIL import Image

    done = [r for r in rows if r["status"] == "complete"]
    done.sort(key=(lambda r: r["eps"]) if sw.search is None else (lambda r: r["trial"]))
    images = []
    for r in done:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=r["trial_run"], artifact_path=GRIDS, tracking_uri=tracking_uri)
        except Exception as e:  # a grid is a convenience: the table does not depend on it
            say(f"warning: no reconstruction grid for trial {r['trial']}: {e}")
            continue
        label = f"ε = {r['eps']:g}" if sw.search is None else r["trial"]
        images.append((label, Image.open(local).convert("RGB")))
    if not images:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(images), 1, figsize=(10, 1.6 * len(images) + 0.4), dpi=110,
                             squeeze=False)
    for ax, (label, im) in zip(axes[:, 0], images):
        ax.imshow(im)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
