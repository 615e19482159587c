"""Eq. 8 anomaly scores (arinv.downstream.anomaly): per-image independence, the optimisation
itself against hand-written updates, and the ROC metrics against scikit-learn."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from arinv.config import LossConfig
from arinv.data.sample import sample_set
from arinv.downstream.anomaly import (
    PAPER_ALPHAS,
    auroc,
    eq8_scores,
    initial_latents,
    roc_curve,
    roc_plot,
)
from arinv.models import create_encoder, create_generator
from arinv.train.gan import build_gan_optimizers, freeze, gan_step

STD = PAPER_ALPHAS["standard"]
KEYS = ("score", "pixel", "feature")
LATENT = (64, 2, 2)  # alexnet_small conv5 at 96 px


@pytest.fixture(scope="module")
def trained():
    """A frozen encoder, an alexnet_small_conv5 generator trained a few pixel + feature steps on
    six sample photographs (then in eval mode), and those photographs, at 96 px (conv5 2 x 2)."""
    torch.manual_seed(0)
    s = sample_set("train", per_class=1, size=96)
    x = torch.from_numpy(s.images[:6]).permute(0, 3, 1, 2).float() / 255
    enc = freeze(create_encoder("alexnet_small", num_classes=8))
    g = create_generator("alexnet_small_conv5")
    opt_g, _ = build_gan_optimizers(g, None, lr_g=1e-3)
    weights = LossConfig(pix=2e-3, feat=1e-2, gan=0)
    losses = [gan_step(g, enc, x, layer="conv5", opt_g=opt_g, weights=weights)["loss_g"].item()
              for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]  # the generator did learn something
    g.eval()
    with torch.no_grad():  # and its output depends on the latent the scores search over
        assert g(initial_latents(range(6), LATENT)).std(0).mean() > 0.01
    return enc, g, x


def _objective(enc, g, f, x, alpha_pix, alpha_feat):
    """Per-image Eq. 8 objective, written out independently of the module."""
    x_hat = g(f)
    target = enc.features(x, "conv5").detach()
    pixel = (x_hat - x).abs().sum(dim=(1, 2, 3))
    feature = (enc.features(x_hat, "conv5") - target).pow(2).sum(dim=(1, 2, 3))
    return alpha_pix * pixel + alpha_feat * feature, pixel, feature


def _close(a, b, rtol=1e-4):
    for k in KEYS:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=0, msg=k)


# ----------------------------------------------------------------------------- independence


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_scores_equal_one_at_a_time_and_follow_a_permutation(trained, optimizer):
    """Convolutions round differently at different batch sizes, and the non-smooth objective
    (L1, ReLU, max-pool) lets those differences grow along the descent; a short search at the
    default learning rates keeps them far inside the tolerance."""
    enc, g, x = trained
    seeds = [10, 11, 12, 13, 14, 15]  # dataset indices
    kw = dict(iters=10, optimizer=optimizer, **STD)
    batched = eq8_scores(enc, g, x, "conv5", seeds=seeds, **kw)
    single = [eq8_scores(enc, g, x[i:i + 1], "conv5", seeds=[s], **kw) for i, s in enumerate(seeds)]
    _close(batched, {k: torch.cat([d[k] for d in single]) for k in KEYS})
    assert all(batched[k].shape == (6,) and batched[k].dtype == torch.float32
               and batched[k].device.type == "cpu" for k in KEYS)
    torch.testing.assert_close(batched["score"], STD["alpha_pix"] * batched["pixel"]
                               + STD["alpha_feat"] * batched["feature"])

    perm = [4, 0, 5, 2, 1, 3]
    permuted = eq8_scores(enc, g, x[perm], "conv5", seeds=[seeds[i] for i in perm], **kw)
    _close(permuted, {k: batched[k][perm] for k in KEYS})

    # the seeds are what the equalities above rest on: other seeds give other scores
    other = eq8_scores(enc, g, x, "conv5", seeds=[s + 100 for s in seeds], **kw)
    assert not torch.allclose(other["score"], batched["score"], rtol=1e-3, atol=0)


def test_default_seeds_are_positions_and_uint8_images_are_divided_by_255(trained):
    enc, g, x = trained
    x8 = (x[:3] * 255).round().to(torch.uint8)
    a = eq8_scores(enc, g, x8, "conv5", iters=2, **STD)
    b = eq8_scores(enc, g, x8.float() / 255, "conv5", iters=2, seeds=[0, 1, 2], **STD)
    _close(a, b, rtol=1e-6)


# ----------------------------------------------------------------------------- optimisation


def test_latent_search_lowers_the_objective_of_every_image(trained):
    enc, g, x = trained
    seeds = list(range(6))
    with torch.no_grad():
        init, _, _ = _objective(enc, g, initial_latents(seeds, LATENT), x, **STD)
    one = eq8_scores(enc, g, x, "conv5", iters=1, seeds=seeds, **STD)["score"]
    twenty = eq8_scores(enc, g, x, "conv5", iters=20, seeds=seeds, **STD)["score"]
    assert (twenty < init).all(), (init, twenty)
    assert twenty.sum() < one.sum() < init.sum()


def _adam(f, grad, state, lr, t, b1=0.9, b2=0.999, eps=1e-8):
    m, v = state
    m.mul_(b1).add_((1 - b1) * grad)
    v.mul_(b2).add_((1 - b2) * grad * grad)
    m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
    return f - lr * m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("optimizer, lr", [("adam", (0.1, 0.001)), ("sgd", (5.0, 1.0))])
def test_matches_hand_written_descent_with_linear_lr_decay(trained, optimizer, lr):
    """Three steps at lr lr0, (lr0 + lr1) / 2, lr1 on the summed objective, scored after the
    last step; Adam with torch's default betas and eps."""
    enc, g, x = trained
    x, seeds, iters = x[:2], [7, 3], 3
    f = initial_latents(seeds, LATENT)
    state = (torch.zeros_like(f), torch.zeros_like(f))
    for t in range(iters):
        step_lr = lr[0] + (lr[1] - lr[0]) * t / (iters - 1)
        f.requires_grad_(True)
        (grad,) = torch.autograd.grad(_objective(enc, g, f, x, **STD)[0].sum(), f)
        with torch.no_grad():
            f = _adam(f, grad, state, step_lr, t) if optimizer == "adam" else f - step_lr * grad
    with torch.no_grad():
        score, pixel, feature = _objective(enc, g, f, x, **STD)
    got = eq8_scores(enc, g, x, "conv5", iters=iters, lr=lr, seeds=seeds, optimizer=optimizer,
                     **STD)
    _close(got, {"score": score, "pixel": pixel, "feature": feature})


def test_models_come_back_unchanged_and_no_grad_callers_work():
    torch.manual_seed(1)
    enc = create_encoder("alexnet_small", num_classes=4)  # train mode, parameters need grads
    g = create_generator("alexnet_small_conv5")
    enc.classifier.eval()  # a submodule in its own mode keeps it
    before = {k: v.clone() for m in (enc, g) for k, v in m.state_dict(prefix=f"{id(m)}.").items()}
    x = torch.rand(2, 3, 128, 128)
    plain = eq8_scores(enc, g, x, "conv5", iters=2, **STD)
    with torch.no_grad():
        under_no_grad = eq8_scores(enc, g, x, "conv5", iters=2, **STD)
    with torch.inference_mode():  # images made there are inference tensors
        under_inference = eq8_scores(enc, g, x.clone(), "conv5", iters=2, **STD)
    _close(plain, under_no_grad, rtol=1e-6)
    _close(plain, under_inference, rtol=1e-6)
    after = {k: v for m in (enc, g) for k, v in m.state_dict(prefix=f"{id(m)}.").items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert g.training and enc.training and not enc.classifier.training
    assert all(p.requires_grad and p.grad is None for m in (enc, g) for p in m.parameters())


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("change, name", [
    ({"iters": 0}, "iters"),
    ({"iters": 2.0}, "iters"),
    ({"alpha_pix": 0.0}, "alpha_pix"),
    ({"alpha_feat": math.inf}, "alpha_feat"),
    ({"alpha_feat": -1e-2}, "alpha_feat"),
    ({"lr": (0.1,)}, "lr"),
    ({"lr": (0.1, -0.001)}, "lr"),
    ({"lr": (math.nan, 0.001)}, "lr"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"images": torch.rand(2, 1, 32, 32)}, "images"),
    ({"images": torch.rand(3, 32, 32)}, "images"),
    ({"images": torch.rand(0, 3, 32, 32)}, "images"),
    ({"images": torch.rand(2, 3, 32, 32) * 255}, "images"),
    ({"images": torch.zeros(2, 3, 32, 32, dtype=torch.int32)}, "images"),
    ({"seeds": [0, 1, 2]}, "seeds"),
    ({"seeds": [0.5, 1.5]}, "seeds"),
])
def test_argument_errors_name_the_argument(change, name):
    enc = create_encoder("alexnet_small", num_classes=4)
    g = create_generator("alexnet_small_conv5")
    kw = {"images": torch.rand(2, 3, 32, 32), "alpha_pix": 1e-3, "alpha_feat": 1e-2}
    kw.update(change)
    with pytest.raises(ValueError, match=name):
        eq8_scores(enc, g, kw.pop("images"), "conv5", **kw)


# ----------------------------------------------------------------------------- ROC


def test_auroc_agrees_with_sklearn_with_ties_and_takes_any_array_type():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.random(200) < 0.3
        s = rng.integers(0, 8, 200).astype(float)  # many ties
        expected = roc_auc_score(y, s)
        assert auroc(s, y) == pytest.approx(expected, abs=1e-12)
        assert auroc(torch.from_numpy(s).float(), torch.from_numpy(y)) == pytest.approx(expected)
        assert auroc(s.tolist(), y.astype(int).tolist()) == pytest.approx(expected)


def test_auroc_extremes_and_missing_classes():
    s, y = [0.1, 0.2, 0.3, 0.9, 1.5], [0, 0, 0, 1, 1]
    assert auroc(s, y) == 1.0
    assert auroc([-v for v in s], y) == 0.0
    assert auroc([1.0] * 5, y) == 0.5
    with pytest.raises(ValueError, match="no anomalies"):
        auroc(s, [0] * 5)
    with pytest.raises(ValueError, match="no normal"):
        auroc(s, [True] * 5)
    with pytest.raises(ValueError, match="equal length"):
        auroc(s, y[:4])
    with pytest.raises(ValueError, match="0/1"):
        auroc(s, [0, 0, 2, 1, 1])


def test_roc_curve_runs_corner_to_corner_monotonically_and_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.random(100) < 0.4
    s = rng.integers(0, 20, 100).astype(float)
    fpr, tpr = roc_curve(s, y)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert len(fpr) == len(np.unique(s)) + 1
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(s, y))


def test_roc_plot_returns_a_png():
    fpr, tpr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    png = roc_plot({"robust": (fpr, tpr, 0.75), "standard": ([0, 1], [0, 1], 0.5)}, "class 3")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and min(img.size) > 100
