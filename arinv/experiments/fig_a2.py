"""Fig. A2: the loss ablation (Sec. A2.1). One encoder pair (standard, robust) is inverted by
generators trained with growing criteria, and by the optimisation-based RI inversion:

  pixel            the l1 pixel loss alone                       (Fig. A2 b; no discriminator)
  pixel_feat       pixel + feature losses                        (Fig. A2 c; no discriminator)
  pixel_feat_gan   pixel + feature + GAN losses, a discriminator (Fig. A2 d; the full method)
  ri               no generator: images optimised from noise until their features match
                   (``arinv.inversion.invert_by_optimisation``; Sec. A2.4's RI baseline)

Every criterion keeps the full criterion's weight for each term it keeps (the generator preset
holds them), so the rows differ only in which terms are on. ``pipelines.ablation`` runs a Ray
Tune trial per (criterion, encoder); this module says what each trial trains and how the table
and the figure read.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import typing

import torch

from arinv.config import (AblationConfig, ConfigError, Criterion, GeneratorTrainConfig,
                          load_config, validate)

COLUMNS = ("standard", "robust")
CRITERIA = typing.get_args(Criterion)  # the figure's order: pixel, + feature, + GAN, RI
LABELS = {"pixel": "Pixel", "pixel_feat": "Pixel + feature",
          "pixel_feat_gan": "Pixel + feature + GAN", "ri": "RI (optimisation)"}
METRICS = (("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"))
TRAINED = ("pixel", "pixel_feat", "pixel_feat_gan")  # the criteria that train a generator


def terms(criterion: str) -> tuple[bool, bool, bool]:
    """(pixel, feature, GAN) terms a criterion uses."""
    return {"pixel": (True, False, False), "pixel_feat": (True, True, False),
            "pixel_feat_gan": (True, True, True)}[criterion]


def criterion_config(full: GeneratorTrainConfig, criterion: str) -> GeneratorTrainConfig:
    """``full`` (the pixel + feature + GAN preset) with the terms ``criterion`` drops set to
    zero, and without a discriminator unless the criterion has the GAN term (``full`` is a
    validated config: with loss.gan > 0 it names its discriminator)."""
    if criterion not in TRAINED:
        raise ValueError(f"criterion {criterion!r} trains no generator; trained: {TRAINED}")
    pix, feat, gan = terms(criterion)
    loss = full.loss
    if not (loss.pix > 0 and loss.feat > 0 and loss.gan > 0):
        raise ConfigError(f"generator: the ablation's preset must be the full criterion (pixel, "
                          f"feature and GAN weights > 0), got loss.pix={loss.pix:g}, "
                          f"loss.feat={loss.feat:g}, loss.gan={loss.gan:g}")
    return dataclasses.replace(
        full,
        loss=dataclasses.replace(loss, pix=loss.pix if pix else 0.0,
                                 feat=loss.feat if feat else 0.0, gan=loss.gan if gan else 0.0),
        generator=dataclasses.replace(full.generator,
                                      discriminator=full.generator.discriminator if gan
                                      else None))


def trial_name(criterion: str, column: str) -> str:
    return f"{criterion}-{column}"


def full_config(ab: AblationConfig) -> GeneratorTrainConfig:
    """The generator preset with the experiment's overrides (the full criterion)."""
    shards = [f"data.shards={ab.shards}"] if ab.shards else []
    try:
        return load_config(GeneratorTrainConfig, ab.generator, [*shards, *ab.generator_set])
    except ConfigError as e:
        raise ConfigError(f"ablation generator / generator_set: {e}") from None


def generator_config(ab: AblationConfig, criterion: str, column: str,
                     encoder: str | None) -> GeneratorTrainConfig:
    """A trial's generator config: the criterion's terms of the preset, inverting ``encoder``
    (a registry URI or checkpoint; None while planning), named after the experiment."""
    gen = criterion_config(full_config(ab), criterion)
    gen = dataclasses.replace(gen, name=f"{ab.name}-{trial_name(criterion, column)}-generator",
                              encoder=dataclasses.replace(gen.encoder, checkpoint=encoder))
    try:
        validate(gen)
    except ConfigError as e:
        raise ConfigError(f"ablation {trial_name(criterion, column)} generator: {e}") from None
    return gen


def cells(ab: AblationConfig) -> list[dict]:
    """One trial per (criterion, encoder column), in the figure's order."""
    cols = [c for c in COLUMNS if getattr(ab, c) is not None]
    return [{"criterion": k, "column": c} for k in CRITERIA if k in ab.criteria for c in cols]


def figure(truth: torch.Tensor, recons: dict) -> tuple[list[torch.Tensor], list[str]]:
    """Fig. A2's layout for ``arinv.viz.save_grid``: the ground truth, then for each criterion
    its standard row and its robust row. ``recons``: {(criterion, column): N x 3 x H x W}; a
    missing cell (a failed trial) is left out. Returns (rows, row labels)."""
    rows, labels = [truth], ["ground truth"]
    for k in CRITERIA:
        for c in COLUMNS:
            if (k, c) in recons:
                rows.append(recons[(k, c)])
                labels.append(f"{LABELS[k]}, {'AR' if c == 'robust' else c}")
    return rows, labels


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def table(rows: dict) -> tuple[str, str]:
    """(markdown, CSV): a row per criterion, per column PSNR / SSIM / LPIPS. ``rows``:
    {(criterion, column): {"psnr": ..., "ssim": ..., "lpips": ... or None}}; a cell without a
    result is n/a (markdown) / empty (CSV)."""
    cols = [c for c in COLUMNS if any(k[1] == c for k in rows)]
    head = [f"{'AR' if c == 'robust' else 'Standard'} {label}" for c in cols
            for _, label in METRICS]
    md = ["| Criterion | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["criterion", *[f"{c}_{m}" for c in cols for m, _ in METRICS]])
    for k in CRITERIA:
        if not any((k, c) in rows for c in cols):
            continue
        vals = [rows.get((k, c), {}).get(m) for c in cols for m, _ in METRICS]
        md.append(f"| {LABELS[k]} | " + " | ".join(_fmt(v) for v in vals) + " |")
        out.writerow([k, *["" if _fmt(v) == "n/a" else v for v in vals]])
    return "\n".join(md) + "\n", buf.getvalue()
