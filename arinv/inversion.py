"""Optimisation-based feature inversion, the "RI" baseline of Sec. A2.4 (Engstrom et al.,
"Adversarial robustness as a prior for learned representations"): start from an image (noise by
default) and descend ``||F(x) - f||^2`` with L2-normalised gradient steps inside the [0, 1] box.
Batched; the encoder stays frozen."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from arinv.attacks.pgd import eval_mode
from arinv.attacks.steps import L2Step
from arinv.losses import feature_loss


def invert_by_optimisation(
    encoder: torch.nn.Module,
    target: torch.Tensor,
    layer: str,
    *,
    size: int,
    steps: int = 1000,
    step_size: float = 1.0,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Images (N x 3 x size x size, in [0, 1]) whose ``layer`` features approach ``target``."""
    p = next(encoder.parameters())
    n = target.shape[0]
    if init is None:
        init = torch.rand(n, 3, size, size, generator=generator).to(p.device)
    x = init.detach().clone().to(p.device)
    # An unbounded L2 "ball": only the box constrains the iterate; step on -grad to descend.
    tm = L2Step(x.clone(), float("inf"), step_size)
    target = target.detach()
    with eval_mode(encoder):
        for _ in tqdm(range(steps), desc="RI inversion", disable=not progress, leave=False):
            x.requires_grad_(True)
            loss = feature_loss(encoder.features(x, layer), target)
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                x = tm.project(tm.step(x.detach(), -grad))
    return x.detach()
