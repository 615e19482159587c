"""Clean and adversarial accuracy, and the standard checks against gradient masking.

A defence that only masks gradients shows tell-tale signs (Athalye et al., Carlini et al.):
robust accuracy that rises with epsilon, PGD weaker than one-step FGSM, or more PGD steps
giving higher accuracy. ``sanity_checks`` reports each of them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from arinv.attacks import fgsm, pgd
from arinv.attacks.autoattack import autoattack_accuracy


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             attack=None, autocast=None) -> float:
    """Top-1 accuracy on (x, y), optionally after ``attack(model, xb, yb) -> x_adv``."""
    device = next(model.parameters()).device
    amp = autocast or contextlib.nullcontext()
    correct = 0
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            if attack is not None:
                xb = attack(model, xb, yb)
            with torch.no_grad(), amp:
                correct += (model(xb).argmax(1) == yb).sum().item()
    finally:
        model.train(was_training)
    return correct / max(1, len(y))


def epoch_accuracies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_list,
                     norm: str, steps: int, batch_size: int = 256, autocast=None) -> dict:
    """The cheap per-epoch check: ``val_clean_acc`` and ``val_pgd_acc_eps<e>`` (PGD, step
    2.5 eps / steps) on a fixed held-out subset."""
    out = {"val_clean_acc": accuracy(model, x, y, batch_size=batch_size, autocast=autocast)}
    for eps in sorted(eps_list):
        attack = lambda m, xb, yb, e=eps: pgd(m, xb, yb, eps=e, step_size=2.5 * e / steps,  # noqa: E731
                                             steps=steps, norm=norm, autocast=autocast)
        out[f"val_pgd_acc_eps{eps:g}"] = accuracy(model, x, y, batch_size=batch_size,
                                                  attack=attack, autocast=autocast)
    return out


@dataclass
class RobustnessReport:
    n: int
    norm: str
    steps: int
    clean: float
    pgd: dict[float, float] = field(default_factory=dict)         # eps -> accuracy
    pgd_more_steps: dict[float, float] = field(default_factory=dict)  # 2x steps
    fgsm: dict[float, float] = field(default_factory=dict)
    autoattack: dict[float, float] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"n": self.n, "norm": self.norm, "steps": self.steps, "clean": self.clean,
                **{k: {str(e): a for e, a in getattr(self, k).items()}
                   for k in ("pgd", "pgd_more_steps", "fgsm", "autoattack")},
                "checks": self.checks}

    def table(self) -> str:
        rows = [f"{'eps':>6} | {'PGD-' + str(self.steps):>8} | {'PGD-' + str(2 * self.steps):>8} "
                f"| {'FGSM':>6} | {'AutoAttack':>10}",
                f"{'0':>6} | {self.clean:8.3f} | {self.clean:8.3f} | {self.clean:6.3f} | {'':>10}"]
        for e in sorted(self.pgd):
            aa = f"{self.autoattack[e]:10.3f}" if e in self.autoattack else f"{'':>10}"
            rows.append(f"{e:6g} | {self.pgd[e]:8.3f} | {self.pgd_more_steps.get(e, float('nan')):8.3f} "
                        f"| {self.fgsm.get(e, float('nan')):6.3f} | {aa}")
        for e in sorted(set(self.autoattack) - set(self.pgd)):
            rows.append(f"{e:6g} | {'':>8} | {'':>8} | {'':>6} | {self.autoattack[e]:10.3f}")
        for c in self.checks:
            rows.append(f"[{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
        return "\n".join(rows)


def robustness_report(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps_list: list[float],
    norm: str = "l2",
    steps: int = 20,
    batch_size: int = 256,
    autocast=None,
    autoattack_eps: list[float] = (),
    autoattack_version: str = "standard",
    autoattack_attacks: list[str] | None = None,
    seed: int = 0,
) -> RobustnessReport:
    """Clean, PGD (steps and 2x steps, step size 2.5 eps / steps), FGSM and AutoAttack accuracy."""
    acc = lambda attack=None: accuracy(model, x, y, batch_size=batch_size,  # noqa: E731
                                       attack=attack, autocast=autocast)

    def pgd_attack(eps, k):
        return lambda m, xb, yb: pgd(m, xb, yb, eps=eps, step_size=2.5 * eps / k, steps=k,
                                     norm=norm, autocast=autocast)

    rep = RobustnessReport(n=len(y), norm=norm, steps=steps, clean=acc())
    for eps in sorted(eps_list):
        rep.pgd[eps] = acc(pgd_attack(eps, steps))
        rep.pgd_more_steps[eps] = acc(pgd_attack(eps, 2 * steps))
        rep.fgsm[eps] = acc(lambda m, xb, yb, e=eps: fgsm(m, xb, yb, eps=e, norm=norm,
                                                          autocast=autocast))
    for eps in autoattack_eps:
        rep.autoattack[eps] = autoattack_accuracy(
            model, x, y, eps=eps, norm=norm, version=autoattack_version,
            attacks=autoattack_attacks, batch_size=batch_size, seed=seed)
    rep.checks = sanity_checks(rep)
    return rep


def sanity_checks(rep: RobustnessReport, tolerance: float | None = None) -> list[dict]:
    """Gradient-masking checks; ``tolerance`` defaults to one image's worth of accuracy."""
    tol = (1.0 / max(1, rep.n)) + 1e-9 if tolerance is None else tolerance
    eps = sorted(rep.pgd)
    points = [(0.0, rep.clean)] + [(e, rep.pgd[e]) for e in eps]
    rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(points, points[1:]) if acc_b > acc_a + tol]
    checks = [{
        "name": "robust accuracy non-increasing in eps",
        "passed": not rises,
        "detail": "ok" if not rises else f"accuracy rises between eps {rises}",
    }]
    weaker = [e for e in eps if e in rep.fgsm and rep.pgd[e] > rep.fgsm[e] + tol]
    checks.append({
        "name": "PGD at least as strong as FGSM",
        "passed": not weaker,
        "detail": "ok" if not weaker else f"PGD accuracy above FGSM at eps {weaker}",
    })
    more = [e for e in eps if e in rep.pgd_more_steps and rep.pgd_more_steps[e] > rep.pgd[e] + tol]
    checks.append({
        "name": "more PGD steps never raise accuracy",
        "passed": not more,
        "detail": "ok" if not more else f"2x steps raised accuracy at eps {more}",
    })
    aa_above = [e for e in rep.autoattack if e in rep.pgd and rep.autoattack[e] > rep.pgd[e] + tol]
    if rep.autoattack:
        checks.append({
            "name": "AutoAttack at least as strong as PGD",
            "passed": not aa_above,
            "detail": "ok" if not aa_above else f"AutoAttack accuracy above PGD at eps {aa_above}",
        })
    return checks
