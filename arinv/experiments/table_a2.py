"""Table A2: reconstructing upscaled images (Sec. A2.2) with a standard and a robust (AR)
autoencoder. ``arinv.downstream.scale`` measures; this module says how the table reads, with
the paper's AlexNet numbers (224 px ImageNet validation images) beside ours.
"""

from __future__ import annotations

import csv
import io
import math

COLUMNS = ("standard", "robust")
METRICS = (("psnr", "PSNR (dB) ↑", ".4f"), ("ssim", "SSIM ↑", ".4f"),
           ("lpips", "LPIPS ↓", ".4f"))

# The paper's Table A2: L -> (standard PSNR, SSIM, LPIPS, robust PSNR, SSIM, LPIPS).
PAPER = {1: (15.057, 0.3067, 0.5473, 17.2273, 0.3580, 0.5665),
         2: (16.2777, 0.4068, 0.4234, 20.3554, 0.4859, 0.469),
         3: (16.0668, 0.4317, 0.4143, 21.3696, 0.5265, 0.4376),
         4: (15.4258, 0.4655, 0.4136, 22.575, 0.5892, 0.4012),
         5: (14.9726, 0.4753, 0.4235, 22.9861, 0.6074, 0.4018),
         6: (14.3093, 0.4887, 0.4358, 23.4824, 0.6527, 0.383),
         7: (13.8922, 0.4852, 0.4587, 23.5778, 0.6588, 0.3898),
         8: (13.4781, 0.4967, 0.4656, 23.7604, 0.70178, 0.3638),
         9: (13.2869, 0.4882, 0.4834, 23.7907, 0.6924, 0.3906),
         10: (13.1013, 0.4969, 0.486, 23.9566, 0.7244, 0.3892)}


def paper_value(L: int, column: str, metric: str) -> float | None:
    if L not in PAPER:
        return None
    i = COLUMNS.index(column) * 3 + [m for m, _, _ in METRICS].index(metric)
    return PAPER[L][i]


def means(metrics: dict) -> dict:
    """``{column: {L: {metric: per-image tensor}}}`` (``scale_table``'s) -> the same with float
    means; a metric not measured (LPIPS without its weights) is NaN."""
    out = {}
    for column, by_l in metrics.items():
        out[column] = {L: {m: float(v[m].double().mean()) if m in v else math.nan
                           for m, _, _ in METRICS} for L, v in by_l.items()}
    return out


def _fmt(v, how: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, how)


def table(rows: dict, resolution: int, *, paper: bool = True) -> tuple[str, str]:
    """(markdown, CSV) in Table A2's layout: one row per L (its target size in the first
    column), per column PSNR / SSIM / LPIPS; in markdown each of ours followed by the paper's
    value in parentheses (its AlexNet at 224 px) when ``paper``. ``rows`` is ``means``'s."""
    columns = [c for c in COLUMNS if c in rows] + [c for c in rows if c not in COLUMNS]
    factors = sorted({L for c in columns for L in rows[c]})
    head = [f"{c} {label}" for c in columns for _, label, _ in METRICS]
    md = ["| L (target size) | " + " | ".join(head) + " |",
          "|---|" + "---:|" * len(head)]
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["L", "size", *[f"{c}_{m}" for c in columns for m, _, _ in METRICS]])
    for L in factors:
        cells, values = [], []
        for c in columns:
            for m, _, how in METRICS:
                v = rows[c].get(L, {}).get(m, math.nan)
                cell = _fmt(v, how)
                ref = paper_value(L, c, m) if paper and c in COLUMNS else None
                cells.append(cell + (f" ({ref:g})" if ref is not None else ""))
                values.append("" if cell == "n/a" else v)
        size = L * resolution
        md.append(f"| {L} ({size} × {size}) | " + " | ".join(cells) + " |")
        out.writerow([L, size, *values])
    note = ("\nIn parentheses: the paper's Table A2 (AlexNet conv5 autoencoders, 224 px ImageNet "
            "validation images). n/a: LPIPS needs its ImageNet trunk weights, not installed.\n"
            if paper else "")
    return "\n".join(md) + "\n" + note, buf.getvalue()
