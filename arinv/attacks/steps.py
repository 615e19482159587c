"""Threat models: the geometry of a perturbation set, separate from the attack loop.

Each threat model knows how to take an ascent step, project back onto its epsilon-ball around the
clean input (and the [0, 1] image box), and draw a random starting point. The PGD loop in
``pgd.py`` knows nothing of L2 versus Linf.
"""

from __future__ import annotations

import abc

import torch


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


class ThreatModel(abc.ABC):
    norm: str = ""

    def __init__(self, x0: torch.Tensor, eps: float, step_size: float):
        self.x0, self.eps, self.step_size = x0, eps, step_size

    @abc.abstractmethod
    def step(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step from ``x`` along the loss gradient ``grad``."""

    @abc.abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest point to ``x`` inside the eps-ball around ``x0`` and the [0, 1] box."""

    @abc.abstractmethod
    def random_perturb(self, x: torch.Tensor) -> torch.Tensor:
        """A random starting point near ``x``."""


class L2Step(ThreatModel):
    """Normalised-gradient ascent in the L2 ball (the robustness library's ``L2Step``)."""

    norm = "l2"

    def step(self, x, grad):
        return x + self.step_size * grad / (_per_sample_norm(grad) + 1e-12)

    def project(self, x):
        delta = x - self.x0
        scale = (self.eps / (_per_sample_norm(delta) + 1e-12)).clamp(max=1.0)
        return (self.x0 + delta * scale).clamp(0.0, 1.0)

    def random_perturb(self, x):
        # A uniformly random direction on the eps-sphere, then into the box.
        r = torch.randn_like(x)
        return (x + self.eps * r / (_per_sample_norm(r) + 1e-12)).clamp(0.0, 1.0)


class LinfStep(ThreatModel):
    """Signed-gradient ascent in the Linf ball."""

    norm = "linf"

    def step(self, x, grad):
        return x + self.step_size * grad.sign()

    def project(self, x):
        return torch.min(torch.max(x, self.x0 - self.eps), self.x0 + self.eps).clamp(0.0, 1.0)

    def random_perturb(self, x):
        return (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0.0, 1.0)


THREAT_MODELS: dict[str, type[ThreatModel]] = {"l2": L2Step, "linf": LinfStep}


def threat_model(norm: str, x0: torch.Tensor, eps: float, step_size: float) -> ThreatModel:
    try:
        cls = THREAT_MODELS[norm.lower()]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; use one of {sorted(THREAT_MODELS)}") from None
    return cls(x0, eps, step_size)
