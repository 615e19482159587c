"""Projected gradient descent (Madry et al.) and FGSM with random start (Wong et al.).

The loop asks autograd for the gradient with respect to the input only, so no weight gradient
is computed during the attack; the model runs in eval mode and gets its mode back afterwards.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .steps import threat_model


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside; afterwards every submodule gets its own mode back (a frozen
    BatchNorm inside a training model stays frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "l2",
    random_start: bool = False,
    use_best: bool = False,
    autocast: torch.autocast | None = None,
) -> torch.Tensor:
    """Maximise cross-entropy within the ``norm`` ball of radius ``eps`` around ``x`` (in [0, 1]).

    ``use_best`` returns, per sample, the iterate with the highest loss seen (the start
    included) instead of the last one. ``autocast`` is entered around each forward pass.
    Returns a detached tensor of ``x``'s shape and dtype.
    """
    if not (eps >= 0 and step_size >= 0 and steps >= 0):  # also refuses NaN
        raise ValueError(f"pgd needs eps, step_size, steps >= 0; got eps={eps}, "
                         f"step_size={step_size}, steps={steps}")
    x = x.detach()
    tm = threat_model(norm, x, eps, step_size)
    if eps == 0 or steps == 0:
        return x.clone()
    amp = autocast or contextlib.nullcontext()
    with eval_mode(model):
        x_adv = tm.random_perturb(x) if random_start else x.clone()
        best_x, best_loss = None, None
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with amp:
                loss = F.cross_entropy(model(x_adv), y, reduction="none")
            if use_best:
                best_x, best_loss = _keep_best(best_x, best_loss, x_adv.detach(), loss.detach())
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                x_adv = tm.project(tm.step(x_adv.detach(), grad))
        if use_best:  # score the last iterate too
            with torch.no_grad(), amp:
                loss = F.cross_entropy(model(x_adv), y, reduction="none")
            x_adv, _ = _keep_best(best_x, best_loss, x_adv, loss)
    return x_adv.detach()


def _keep_best(best_x, best_loss, x, loss):
    if best_loss is None:
        return x.clone(), loss.float()
    better = loss.float() > best_loss
    mask = better.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x, best_x), torch.where(better, loss.float(), best_loss)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float | None = None,
    norm: str = "linf",
    random_start: bool = True,
    autocast: torch.autocast | None = None,
) -> torch.Tensor:
    """FGSM from a random start ("fast is better than free"): one step of 1.25 * eps."""
    return pgd(model, x, y, eps=eps, step_size=1.25 * eps if step_size is None else step_size,
               steps=1, norm=norm, random_start=random_start, autocast=autocast)
