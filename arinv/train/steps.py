"""Pure training steps: tensors and modules in, metrics out. Ray only feeds them batches.

Metrics are returned as 0-d tensors (no host sync inside the step); call ``float()`` when
logging. ``loss_scale`` and ``update`` support gradient accumulation: with ``k`` micro-batches
per optimiser step, pass ``loss_scale=1/k`` and ``update=True`` on the last one only.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from arinv.attacks import pgd
from arinv.config import AttackConfig


def standard_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    autocast=None,
    loss_scale: float = 1.0,
    update: bool = True,
) -> dict[str, torch.Tensor]:
    """One cross-entropy step on (x, y); images in [0, 1]."""
    model.train()
    with autocast or contextlib.nullcontext():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    (loss * loss_scale).backward()
    if update:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), "acc": (logits.argmax(1) == y).float().mean().detach()}


def adversarial_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig,
    *,
    autocast=None,
    loss_scale: float = 1.0,
    update: bool = True,
    attack_model: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Madry et al.: train on PGD examples built against the current weights (eval-mode attack).

    ``attack_model``: the module the attack differentiates (default ``model``); a DDP run passes
    the wrapped module, since the attack's input gradients need no gradient synchronisation.
    """
    x_adv = pgd(
        attack_model or model, x, y,
        eps=attack.eps, step_size=attack.effective_step_size, steps=attack.steps,
        norm=attack.norm, random_start=attack.random_start, use_best=attack.use_best,
        autocast=autocast,
    )
    out = standard_step(model, optimizer, x_adv, y, autocast=autocast,
                        loss_scale=loss_scale, update=update)
    return {"adv_loss": out["loss"], "adv_acc": out["acc"]}


def build_optimizer(model: nn.Module, optim_cfg) -> tuple[torch.optim.Optimizer, object]:
    """SGD with momentum; the lr is multiplied by ``lr_gamma`` every ``lr_step_epochs`` epochs
    (call ``scheduler.step()`` once per epoch)."""
    opt = torch.optim.SGD(model.parameters(), lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                          weight_decay=optim_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=optim_cfg.lr_step_epochs,
                                            gamma=optim_cfg.lr_gamma)
    return opt, sched
