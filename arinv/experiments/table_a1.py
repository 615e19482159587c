"""Table A1: one-vs-all anomaly detection with standard and robust (AR) autoencoders.

For each encoder column (standard, robust) and each positive class: a generator inverting the
encoder's tap is trained on that class's training images only (pixel + feature losses at the
column's weights, no augmentation, images at the encoder's resolution); every test image is
then scored with Eq. 8 (``arinv.downstream.anomaly.eq8_scores``) and the AUROC of the scores
against "not the positive class" is the cell. ``pipelines.anomaly`` runs the cells as Ray Tune
trials; this module says what each trial trains and how the table reads, with the paper's
ADGAN / standard / AR numbers beside ours.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

from arinv.config import AnomalyConfig, ConfigError, GeneratorTrainConfig, load_config, validate

COLUMNS = ("standard", "robust")

# The paper's Table A1 (AUROC): positive class -> (ADGAN, proposed standard, proposed AR).
PAPER = {
    "cifar10": {0: (0.649, 0.6874, 0.6533), 1: (0.39, 0.3498, 0.3755),
                2: (0.652, 0.6756, 0.662), 3: (0.481, 0.5708, 0.6123),
                4: (0.735, 0.751, 0.7538), 5: (0.476, 0.5101, 0.5278),
                6: (0.623, 0.6895, 0.7113), 7: (0.487, 0.4773, 0.4526),
                8: (0.66, 0.7232, 0.7008), 9: (0.378, 0.362, 0.4408),
                "average": (0.553, 0.5797, 0.589)},
    "catsdogs": {0: (0.507, 0.663, 0.649), 1: (0.481, 0.392, 0.427),
                 "average": (0.494, 0.527, 0.538)},
}
DATASET_NAMES = {"cifar10": "CIFAR-10", "catsdogs": "Cats vs. Dogs", "other": "this data"}


def trial_name(column: str, positive: int) -> str:
    return f"{column}-class{positive}"


def run_name(experiment: str, trial: str) -> str:
    """The generator run (and its config's name) of a trial."""
    return f"{experiment}-{trial}-generator"


def weights(an: AnomalyConfig, column: str) -> tuple[float, float]:
    """(lambda_pix, lambda_feat) of a column: its generators' loss weights and, unless the
    scoring config overrides them, Eq. 8's alphas (the paper uses the same values)."""
    pix, feat = an.standard_weights if column == "standard" else an.robust_weights
    return float(pix), float(feat)


def alphas(an: AnomalyConfig, column: str) -> tuple[float, float]:
    pix, feat = weights(an, column)
    s = an.scoring
    return (s.alpha_pix if s.alpha_pix is not None else pix,
            s.alpha_feat if s.alpha_feat is not None else feat)


def generator_config(an: AnomalyConfig, column: str, positive: int,
                     encoder: str | None) -> GeneratorTrainConfig:
    """A trial's generator config: the preset with the experiment's overrides, trained on
    ``positive`` only, pixel + feature losses at the column's weights (no GAN term, no
    augmentation), inverting ``encoder`` (a registry URI or checkpoint; None while planning)."""
    shards = [f"data.shards={an.shards}"] if an.shards else []
    try:
        gen = load_config(GeneratorTrainConfig, an.generator, [*shards, *an.generator_set])
    except ConfigError as e:
        raise ConfigError(f"anomaly generator_set: {e}") from None
    pix, feat = weights(an, column)
    gen = dataclasses.replace(
        gen, name=run_name(an.name, trial_name(column, positive)), augment=False,
        encoder=dataclasses.replace(gen.encoder, checkpoint=encoder),
        loss=dataclasses.replace(gen.loss, pix=pix, feat=feat, gan=0.0),
        data=dataclasses.replace(gen.data, classes=[positive]))
    try:
        validate(gen)
    except ConfigError as e:
        raise ConfigError(f"anomaly {trial_name(column, positive)} generator: {e}") from None
    return gen


def columns(an: AnomalyConfig) -> list[str]:
    return [c for c in COLUMNS if getattr(an, c) is not None]


def check_robustness(column: str, attack, where: str) -> None:
    """A column's encoder must be what the column says: trained without an attack for
    "standard", adversarially for "robust"."""
    if column == "robust" and attack is None:
        raise ConfigError(f"robust: {where} holds a standard encoder (trained without an "
                          "attack); give an adversarially trained one (or import a published "
                          "robust model with 'arinv models import --robust-eps')")
    if column == "standard" and attack is not None:
        raise ConfigError(f"standard: {where} holds an adversarially trained encoder "
                          f"(eps {attack.eps:g}); give a standard one")


def row(column: str, positive: int, class_name: str, auc: float, n_pos: int, n_neg: int) -> dict:
    return {"column": column, "positive": positive, "class_name": class_name, "auroc": auc,
            "n_positive": n_pos, "n_negative": n_neg}


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def table(rows: list[dict], dataset: str, class_names: list[str]) -> tuple[str, str]:
    """(markdown, CSV) in Table A1's layout: a row per positive class and the average; the
    paper's ADGAN / standard / AR columns, then ours (standard, robust). A cell with no result
    (a failed trial) is blank and left out of the average."""
    ours = {(r["column"], r["positive"]): r for r in rows}
    positives = sorted({r["positive"] for r in rows})
    cols = [c for c in COLUMNS if any(r["column"] == c for r in rows)]
    paper = PAPER.get(dataset, {})
    head = ["Dataset", "Positive class", "ADGAN (paper)", "Standard (paper)", "AR (paper)",
            *[f"{'Standard' if c == 'standard' else 'AR'} (ours)" for c in cols]]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["dataset", "positive", "class_name", "adgan_paper", "standard_paper",
                  "ar_paper", *[f"{c}_ours" for c in cols]])
    name = DATASET_NAMES[dataset]
    for i, p in enumerate(positives):
        ref = paper.get(p, (None, None, None))
        mine = [ours[(c, p)]["auroc"] if (c, p) in ours else None for c in cols]
        label = f"{p} ({class_names[p]})" if p < len(class_names) else str(p)
        md.append(f"| {name if i == 0 else ''} | {label} | "
                  + " | ".join(_fmt(v) for v in (*ref, *mine)) + " |")
        out.writerow([dataset, p, class_names[p] if p < len(class_names) else "",
                      *[_fmt(v) for v in (*ref, *mine)]])
    avg = [_mean([ours[(c, p)]["auroc"] for p in positives if (c, p) in ours]) for c in cols]
    ref = paper.get("average", (None, None, None)) if set(positives) >= set(
        k for k in paper if k != "average") and paper else (None, None, None)
    md.append("| | Average | " + " | ".join(_fmt(v) for v in (*ref, *avg)) + " |")
    out.writerow([dataset, "average", "", *[_fmt(v) for v in (*ref, *avg)]])
    return "\n".join(md) + "\n", buf.getvalue()


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None
