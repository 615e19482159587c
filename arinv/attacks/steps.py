"""Threat models: the geometry of a perturbation set, separate from the attack loop.

Each threat model knows how to take an ascent step, project back onto its epsilon-ball around the
clean input (and the [0, 1] image box), and draw a random starting point. The PGD loop in
``pgd.py`` knows nothing of L2 versus Linf.
"""

from __future__ import annotations

import abc

import torch


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against ``t``. (No ``flatten``: on a
    channels-last batch that would copy the whole tensor.)"""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


class ThreatModel(abc.ABC):
    norm: str = ""

    def __init__(self, x0: torch.Tensor, eps: float, step_size: float):
        self.x0, self.eps, self.step_size = x0, eps, step_size

    @abc.abstractmethod
    def step(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step from ``x`` along the loss gradient ``grad`` (may overwrite ``x``)."""

    @abc.abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The point of the eps-ball around ``x0`` and the [0, 1] box nearest to ``x``
        (may overwrite ``x``)."""

    @abc.abstractmethod
    def random_perturb(self, x: torch.Tensor) -> torch.Tensor:
        """A random starting point near ``x``."""


class L2Step(ThreatModel):
    """Normalised-gradient ascent in the L2 ball (the robustness library's ``L2Step``).

    ``step`` and ``project`` work in place on ``x`` (the attack loop owns it): each PGD
    iteration then costs a handful of memory passes and no allocations beyond two norms.
    """

    norm = "l2"

    def step(self, x, grad):
        return x.addcmul_(grad, self.step_size / (_per_sample_norm(grad) + 1e-12))

    def project(self, x):
        delta = x.sub_(self.x0)
        scale = (self.eps / (_per_sample_norm(delta) + 1e-12)).clamp_(max=1.0)
        return delta.mul_(scale).add_(self.x0).clamp_(0.0, 1.0)

    def random_perturb(self, x):
        # A uniformly random direction on the eps-sphere, then into the box.
        r = torch.randn_like(x)
        return (x + self.eps * r / (_per_sample_norm(r) + 1e-12)).clamp(0.0, 1.0)


class LinfStep(ThreatModel):
    """Signed-gradient ascent in the Linf ball (in place, like ``L2Step``)."""

    norm = "linf"

    def step(self, x, grad):
        return x.add_(grad.sign(), alpha=self.step_size)

    def project(self, x):
        return x.sub_(self.x0).clamp_(-self.eps, self.eps).add_(self.x0).clamp_(0.0, 1.0)

    def random_perturb(self, x):
        return (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0.0, 1.0)


THREAT_MODELS: dict[str, type[ThreatModel]] = {"l2": L2Step, "linf": LinfStep}


def threat_model(norm: str, x0: torch.Tensor, eps: float, step_size: float) -> ThreatModel:
    try:
        cls = THREAT_MODELS[norm.lower()]
    except KeyError:
        raise ValueError(f"unknown norm {norm!r}; use one of {sorted(THREAT_MODELS)}") from None
    return cls(x0, eps, step_size)
