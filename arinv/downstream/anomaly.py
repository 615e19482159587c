"""One-vs-all anomaly detection by latent search (Sec. A1, Eq. 8).

With a frozen encoder tap ``F`` and a generator ``G`` trained to invert it on the normal class,
a test image ``x`` is explained by the latent

    f_hat = argmin_f  alpha_pix ||G(f) - x||_1 + alpha_feat ||F(G(f)) - F(x)||_2^2

and its anomaly score is that objective at ``f_hat``: images the generator cannot reproduce
score high. ``f`` has the tap's shape, starts as white Gaussian noise and takes a fixed number
of optimiser steps whose learning rate decays linearly. The norms are per-image sums, as in
``arinv.losses``; ``PAPER_ALPHAS`` holds the appendix's weights for each encoder kind.

Contract: an image's score depends only on the image, its seed and the models, never on the
batch it is scored in or its position there, because

* the objective is summed (not averaged) over images, so each latent gets exactly its own
  gradient, and the models run in eval mode (BatchNorm uses its running statistics);
* the optimiser's update is elementwise (Adam or plain SGD);
* image i's initial latent is drawn from its own CPU ``torch.Generator`` seeded with
  ``seeds[i]``. Pass dataset indices as seeds, and a score is reproducible from
  (models, dataset, index) alone, however the data set is split into batches or workers.

Batched and one-at-a-time scores agree to float rounding, not bitwise: convolution kernels may
accumulate in a different order at a different batch size, and because the objective is not
smooth (the L1 norm, ReLUs, max-pooling) those rounding differences can grow over the iterations.

``auroc``, ``roc_curve`` and ``roc_plot`` turn scores into the one-vs-all metric.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

# Sec. A1: weights of Eq. 8 for a standard autoencoder and for the robust (AR) encoder.
PAPER_ALPHAS = {
    "standard": {"alpha_pix": 2e-3, "alpha_feat": 1e-2},
    "robust": {"alpha_pix": 2e-6, "alpha_feat": 1e-2},
}

_OPTIMIZERS = ("adam", "sgd")


# ----------------------------------------------------------------------------- Eq. 8 scores


def initial_latents(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """White Gaussian noise, ``len(seeds) x *shape`` float32 on CPU: row i is
    ``torch.randn(shape, generator=torch.Generator().manual_seed(seeds[i]))``."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


def eq8_scores(
    encoder: nn.Module,
    generator: nn.Module,
    images: torch.Tensor,
    layer: str,
    *,
    alpha_pix: float,
    alpha_feat: float,
    iters: int = 100,
    lr: tuple[float, float] = (0.1, 0.001),
    seeds: Sequence[int] | None = None,
    optimizer: str = "adam",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Anomaly scores of Eq. 8 for ``images`` (N x 3 x H x W, float in [0, 1] or uint8).

    ``generator`` maps ``encoder.features(., layer)`` back to images. Each image's latent starts
    from ``initial_latents(seeds, tap shape)`` (``seeds`` default ``range(N)``; pass dataset
    indices) and takes ``iters`` optimiser steps on the summed objective; the learning rate at
    step t (0-based) is ``lr[0] + (lr[1] - lr[0]) * t / (iters - 1)`` (``lr[0]`` when
    ``iters == 1``). The appendix says "stochastic gradient descent" without naming the variant;
    ``optimizer="adam"`` (default, torch's Adam with its default betas) follows ADGAN, which
    the protocol comes from, and ``"sgd"`` is plain gradient descent.

    Returns per-image float32 CPU tensors of length N, all evaluated at the final latent
    (after the last step, by one more forward): ``pixel`` = ``||G(f) - x||_1``, ``feature`` =
    ``||F(G(f)) - F(x)||_2^2`` and ``score`` = ``alpha_pix * pixel + alpha_feat * feature``.

    Both models run in eval mode with no parameter gradients, and get their modes and
    ``requires_grad`` flags back afterwards; works inside ``torch.no_grad()`` callers.
    """
    _check_scalars(iters=iters, alpha_pix=alpha_pix, alpha_feat=alpha_feat, lr=lr,
                   optimizer=optimizer)
    n = _check_images(images)
    seeds = _check_seeds(seeds, n)
    device = _device_of(encoder, generator)
    with torch.inference_mode(False), torch.enable_grad(), _frozen(encoder, generator), \
            parametrize.cached():
        x = images.to(device).clone()  # a clone is a normal tensor even if images is not
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        with torch.no_grad():
            target = encoder.features(x, layer)
        f = initial_latents(seeds, target.shape[1:]).to(device).requires_grad_(True)
        opt = (torch.optim.Adam([f], lr=lr[0]) if optimizer == "adam"
               else torch.optim.SGD([f], lr=lr[0]))
        for t in tqdm(range(iters), desc="Eq. 8 latent search", disable=not progress,
                      leave=False):
            for group in opt.param_groups:
                group["lr"] = _lr_at(t, iters, lr)
            pixel, feature = _terms(encoder, generator, f, x, target, layer)
            objective = (alpha_pix * pixel + alpha_feat * feature).sum()
            (f.grad,) = torch.autograd.grad(objective, f)
            opt.step()
        with torch.no_grad():
            pixel, feature = _terms(encoder, generator, f, x, target, layer)
    score = alpha_pix * pixel + alpha_feat * feature
    return {k: v.detach().float().cpu() for k, v in
            (("score", score), ("pixel", pixel), ("feature", feature))}


def _terms(encoder, generator, f, x, target, layer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``||G(f) - x||_1`` and ``||F(G(f)) - F(x)||_2^2``, each of shape N."""
    x_hat = generator(f)
    pixel = (x_hat - x).abs().flatten(1).sum(1)
    feature = (encoder.features(x_hat, layer) - target).pow(2).flatten(1).sum(1)
    return pixel, feature


def _lr_at(t: int, iters: int, lr: tuple[float, float]) -> float:
    lr0, lr1 = lr
    return lr0 if iters == 1 else lr0 + (lr1 - lr0) * t / (iters - 1)


@contextlib.contextmanager
def _frozen(*models: nn.Module):
    """Eval mode and no parameter gradients inside; every submodule's mode and every
    parameter's ``requires_grad`` restored afterwards."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    flags = [(p, p.requires_grad) for model in models for p in model.parameters()]
    try:
        for model in models:
            model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def _device_of(encoder: nn.Module, generator: nn.Module) -> torch.device:
    devices = {p.device for m in (encoder, generator) for p in m.parameters()}
    if len(devices) != 1:
        raise ValueError(f"encoder, generator: both models must sit on one device, found "
                         f"{sorted(map(str, devices))}")
    return devices.pop()


def _check_scalars(*, iters, alpha_pix, alpha_feat, lr, optimizer) -> None:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters: must be an int >= 1, got {iters!r}")
    for name, v in (("alpha_pix", alpha_pix), ("alpha_feat", alpha_feat)):
        if not _positive_finite(v):
            raise ValueError(f"{name}: must be a positive finite number, got {v!r}")
    if (not isinstance(lr, (tuple, list)) or len(lr) != 2
            or not all(_positive_finite(v) for v in lr)):
        raise ValueError(f"lr: must be (start, end), two positive finite numbers, got {lr!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer: must be one of {_OPTIMIZERS}, got {optimizer!r}")


def _positive_finite(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and v > 0)


def _check_images(images) -> int:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images: must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] < 1 or images.shape[1] != 3:
        raise ValueError(f"images: must be N x 3 x H x W with N >= 1, got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ValueError(f"images: must be float in [0, 1] or uint8, got {images.dtype}")
        lo, hi = images.min().item(), images.max().item()
        if not (0 <= lo and hi <= 1):
            raise ValueError(f"images: float images must lie in [0, 1], got [{lo}, {hi}]")
    return images.shape[0]


def _check_seeds(seeds, n: int) -> list[int]:
    if seeds is None:
        return list(range(n))
    seeds = _numpy(seeds).ravel()
    if len(seeds) != n:
        raise ValueError(f"seeds: need one per image ({n}), got {len(seeds)}")
    if seeds.dtype.kind not in "iu":
        raise ValueError(f"seeds: must be integers (dataset indices), got dtype {seeds.dtype}")
    return [int(s) for s in seeds]


# ----------------------------------------------------------------------------- ROC metrics


def auroc(scores, is_anomaly) -> float:
    """Area under the ROC curve, a higher score meaning "more anomalous": the Mann-Whitney U
    statistic over (anomaly, normal) pairs divided by their number, a tie counting one half
    (average ranks). Scores and labels: 1-D tensors, arrays or lists of equal length."""
    s, y = _scores_labels(scores, is_anomaly)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each value
    ranks = avg_rank[inverse]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores, is_anomaly) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate), one point per distinct score used as the
    threshold "anomalous when score >= threshold", from (0, 0) to (1, 1). Its trapezoid area
    equals ``auroc``."""
    s, y = _scores_labels(scores, is_anomaly)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last position of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_plot(curves: dict[str, tuple], title: str = "") -> bytes:
    """PNG bytes: one ROC line per ``name -> (fpr, tpr, auroc)``, labelled with its AUROC,
    and the chance diagonal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(_numpy(fpr), _numpy(tpr), label=f"{name} (AUROC {float(auc):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _scores_labels(scores, is_anomaly) -> tuple[np.ndarray, np.ndarray]:
    s, y = _numpy(scores), _numpy(is_anomaly)
    if s.ndim != 1 or y.ndim != 1 or len(s) != len(y):
        raise ValueError(f"scores, is_anomaly: must be 1-D of equal length, got shapes "
                         f"{s.shape} and {y.shape}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores: must be finite (found NaN or inf)")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("is_anomaly: must be booleans or 0/1")
        y = y.astype(bool)
    if not y.any():
        raise ValueError("is_anomaly: no anomalies (positive class absent); AUROC needs both")
    if y.all():
        raise ValueError("is_anomaly: no normal images (negative class absent); AUROC needs both")
    return s, y
