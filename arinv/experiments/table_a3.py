"""Table A3: how robustness (the PGD radius eps an encoder is trained at) trades accuracy for
invertibility.

One column per eps. For each: train the encoder with L2 PGD at eps (eps = 0 is standard
training), measure its clean accuracy and its PGD accuracy at the table's attack radius (eps
itself, or ``standard_attack_eps`` for the eps = 0 encoder, which every positive radius would
break), train a generator inverting its tap with pixel + feature losses, and measure PSNR /
SSIM / LPIPS of its reconstructions on held-out images. ``pipelines.sweep`` runs the columns as
Ray Tune trials; this module says what each trial is and how the table reads.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

from arinv.config import (ConfigError, EncoderTrainConfig, GeneratorTrainConfig, SweepConfig,
                          load_config, validate)

EPS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # the paper's grid (L2, [0, 1] pixel units)

# The table's rows: (label, row key, format); a row dict holds these keys per eps.
ROWS = [("Standard accuracy (%)", "standard_acc", "pct"),
        ("ℓ2 PGD accuracy (%)", "pgd_acc", "pct"),
        ("attacked at ε", "attack_eps", "g"),
        ("PSNR (dB) ↑", "psnr", ".4f"),
        ("SSIM ↑", "ssim", ".4f"),
        ("LPIPS ↓", "lpips", ".4f")]


def attack_radius(eps: float, standard_attack_eps: float) -> float:
    """The radius the eps-trained encoder is attacked with in the table."""
    return eps if eps > 0 else standard_attack_eps


def trial_name(eps: float) -> str:
    return f"eps{float(eps):g}"


def run_name(sweep: str, trial: str, kind: str) -> str:
    """The training run (and its config's name) of a trial's ``encoder`` or ``generator``."""
    return f"{sweep}-{trial}-{kind}"


def load_preset(cls, preset: str, overrides: list[str], where: str):
    try:
        return load_config(cls, preset, overrides)
    except ConfigError as e:
        raise ConfigError(f"sweep {where}: {e}") from None


def checked(cfg, where: str):
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"sweep {where}: {e}") from None
    return cfg


def trial_configs(sw: SweepConfig, eps: float) -> tuple[EncoderTrainConfig, GeneratorTrainConfig]:
    """The eps column's encoder and generator configs: the sweep's presets with its overrides,
    the encoder's attack at eps (none at eps = 0; a preset's explicit step size scaled with eps,
    so every column takes the same steps relative to its radius) and its evaluation radii
    including the table's; the generator's ``encoder.checkpoint`` is left for the trial to set to the
    encoder it trained."""
    shards = [f"data.shards={sw.shards}"] if sw.shards else []
    enc = load_preset(EncoderTrainConfig, sw.encoder, [*shards, *sw.encoder_set], "encoder_set")
    if enc.attack is None and any(e > 0 for e in sw.eps):
        raise ConfigError(f"sweep encoder: preset {sw.encoder!r} trains without an attack; an "
                          "eps sweep needs a robust preset (with an attack section) whose "
                          "attack.eps each trial sets")
    radius = attack_radius(eps, sw.standard_attack_eps)
    trial = trial_name(eps)
    enc = dataclasses.replace(
        enc, name=run_name(sw.name, trial, "encoder"),
        attack=_attack_at(enc.attack, eps) if eps > 0 else None,
        eval=dataclasses.replace(enc.eval, pgd_eps=sorted({*enc.eval.pgd_eps, radius})))
    gen = load_preset(GeneratorTrainConfig, sw.generator, [*shards, *sw.generator_set],
                      "generator_set")
    gen = dataclasses.replace(gen, name=run_name(sw.name, trial, "generator"),
                              encoder=dataclasses.replace(gen.encoder, checkpoint=None))
    if gen.encoder.name != enc.encoder.name:
        raise ConfigError(f"sweep generator: preset {sw.generator!r} inverts a "
                          f"{gen.encoder.name} encoder, but preset {sw.encoder!r} trains a "
                          f"{enc.encoder.name}; pick a matching pair")
    return checked(enc, f"eps={eps:g} encoder"), checked(gen, f"eps={eps:g} generator")


def _attack_at(attack, eps: float):
    step = None if attack.step_size is None else attack.step_size * eps / attack.eps
    return dataclasses.replace(attack, eps=eps, step_size=step)


def row(eps: float, standard_attack_eps: float, robustness: dict, quality: dict) -> dict:
    """A column's measurements from the encoder's robustness report and the generator's
    held-out quality (LPIPS None when its weights are not installed)."""
    radius = attack_radius(eps, standard_attack_eps)
    lp = quality.get("lpips")
    return {"eps": eps, "attack_eps": radius, "standard_acc": robustness["clean"],
            "pgd_acc": robustness["pgd"][str(float(radius))], "psnr": quality["psnr"],
            "ssim": quality["ssim"], "lpips": math.nan if lp is None else float(lp)}


def _fmt(v, how: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if how == "pct":
        return f"{100 * v:.2f}"
    return format(v, how)


def table(rows: list[dict]) -> tuple[str, str]:
    """(markdown, CSV) in Table A3's layout: one column per eps, one row per measurement, and
    each column's trial status last."""
    rows = sorted(rows, key=lambda r: r["eps"])
    head = [f"ε = {r['eps']:g}" for r in rows]
    md = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(rows)]
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["measure", *[f"eps={r['eps']:g}" for r in rows]])
    for label, key, how in ROWS:
        md.append(f"| {label} | " + " | ".join(_fmt(r.get(key), how) for r in rows) + " |")
        out.writerow([key, *["" if _fmt(r.get(key), "g") == "n/a" else r[key] for r in rows]])
    md.append("| trial | " + " | ".join(r["status"] for r in rows) + " |")
    out.writerow(["status", *[r["status"] for r in rows]])
    return "\n".join(md) + "\n", buf.getvalue()
