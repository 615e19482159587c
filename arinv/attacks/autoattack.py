"""AutoAttack through the reference implementation (``pyautoattack`` on PyPI)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .pgd import eval_mode

_NORMS = {"l2": "L2", "linf": "Linf"}


def autoattack_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "l2",
    version: str = "standard",
    attacks: list[str] | None = None,
    batch_size: int = 250,
    seed: int = 0,
) -> float:
    """Robust accuracy under AutoAttack (APGD-CE, APGD-T, FAB-T, Square for ``standard``).

    ``version="custom"`` with ``attacks=["apgd-ce", ...]`` runs a subset (cheaper, weaker).
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:  # pragma: no cover - a core dependency
        raise RuntimeError("AutoAttack needs the 'pyautoattack' package: pip install pyautoattack") from e
    if norm.lower() not in _NORMS:
        raise ValueError(f"AutoAttack norm must be one of {sorted(_NORMS)}, got {norm!r}")
    device = next(model.parameters()).device
    with eval_mode(model):
        adversary = AutoAttack(model, norm=_NORMS[norm.lower()], eps=eps, version=version,
                               attacks=attacks, device=device, seed=seed)
        n_classes = int(model(x[:1].to(device)).shape[1])
        # The targeted attacks try 9 target classes by default; fewer classes need fewer targets.
        adversary.apgd_targeted.n_target_classes = min(9, n_classes - 1)
        adversary.fab.n_target_classes = min(9, n_classes - 1)
        # The reference code uses .view on gradients: give it contiguous NCHW inputs.
        _, y_adv = adversary.run_standard_evaluation(x.to(device).contiguous(), y.to(device),
                                                     batch_size=batch_size)
    return (y_adv.cpu() == y.cpu()).float().mean().item()
