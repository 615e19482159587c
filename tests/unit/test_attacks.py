"""PGD / FGSM (arinv.attacks) and the adversarial training step.

Most tests use a tiny hand-built conv net (milliseconds per call); the BatchNorm tests use
``resnet18_cifar_small``; one module-scoped fixture trains a small conv-BN net on the bundled
sample set (about a second) so that the attack-strength tests run against a real classifier.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arinv.attacks import fgsm, pgd
from arinv.config import AttackConfig
from arinv.data.sample import sample_set
from arinv.models import create_encoder
from arinv.train.steps import adversarial_step, standard_step

# ----------------------------------------------------------------------------- helpers


def tiny_net(num_classes: int = 4) -> nn.Module:
    """Two convs and a linear head: no BatchNorm or dropout, so train and eval modes agree."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes),
    )


def make_batch(n: int = 6, size: int = 8, num_classes: int = 4, seed: int = 0):
    """Images in [0, 1] with some pixels exactly on the box faces, so clamping matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    return x, torch.randint(0, num_classes, (n,), generator=g)


def ce(model, x, y):
    """Per-sample cross-entropy in eval mode."""
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y, reduction="none")


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def linf(d):
    return d.flatten(1).abs().amax(1)


def l2(d):
    return d.flatten(1).norm(dim=1)


def to_tensors(s):
    """A SampleSet (uint8 N x H x W x 3) -> float N x 3 x H x W in [0, 1], int64 labels."""
    x = torch.from_numpy(s.images).permute(0, 3, 1, 2).float().div(255)
    return x, torch.from_numpy(s.labels)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine
    spinning OpenMP workers make these tests several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return tiny_net()


@pytest.fixture(scope="module")
def fixed_net():
    """For the hypothesis test (hypothesis refuses function-scoped fixtures)."""
    torch.manual_seed(0)
    return tiny_net().eval()


@pytest.fixture
def bn_net():
    torch.manual_seed(0)
    return create_encoder("resnet18_cifar_small", num_classes=4)


def small_bn_net(num_classes: int = 8) -> nn.Module:
    """Three strided conv-BN-ReLU blocks: trains in under a second on the 32 px sample set."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU()]
    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


@pytest.fixture(scope="module")
def trained():
    """A small BN net trained with ``standard_step`` on the sample set (8 classes, 32 px);
    returns (model in eval mode, val images, val labels, clean val accuracy)."""
    torch.manual_seed(0)
    xt, yt = to_tensors(sample_set("train", per_class=16, size=32))
    xv, yv = to_tensors(sample_set("val", per_class=8, size=32))
    model = small_bn_net()
    epochs, batch, lr = 30, 32, 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                total_steps=epochs * (len(xt) // batch))
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            flip = torch.rand(len(idx), 1, 1, 1) < 0.5
            standard_step(model, opt, torch.where(flip, xt[idx].flip(3), xt[idx]), yt[idx])
            sched.step()
    model.eval()
    return model, xv, yv, accuracy(model, xv, yv)


# ----------------------------------------------------------------------------- the threat model


@settings(max_examples=15, deadline=None)
@given(
    norm=st.sampled_from(["l2", "linf"]),
    eps_frac=st.floats(0.0, 1.0),
    step_mult=st.floats(0.05, 3.0),  # step sizes above eps make the projection do the work
    steps=st.integers(0, 4),
    random_start=st.booleans(),
    use_best=st.booleans(),
)
def test_perturbation_stays_in_eps_ball_and_box(fixed_net, norm, eps_frac, step_mult, steps,
                                                random_start, use_best):
    x, y = make_batch()
    eps = eps_frac * (2.0 if norm == "l2" else 0.3)
    x_adv = pgd(fixed_net, x, y, eps=eps, step_size=step_mult * eps, steps=steps, norm=norm,
                random_start=random_start, use_best=use_best)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    size = l2 if norm == "l2" else linf
    assert (size(x_adv - x) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 0.1)])
def test_random_start_moves_the_first_iterate(net, norm, eps):
    x, y = make_batch()
    torch.manual_seed(1)
    # A negligible step: the result is (nearly) the random start, which must be off x.
    x_adv = pgd(net, x, y, eps=eps, step_size=1e-6, steps=1, norm=norm, random_start=True)
    assert (linf(x_adv - x) > 1e-3).all()
    size = l2 if norm == "l2" else linf
    assert (size(x_adv - x) <= eps + 1e-6).all()


class Flat(nn.Module):
    """Constant logits with a zero input gradient: PGD cannot move, so with ``use_best`` (ties
    keep the earliest iterate) pgd returns its random start exactly as drawn."""

    def forward(self, x):
        return torch.zeros(len(x), 4) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("norm,eps", [("l2", 2.0), ("linf", 0.3)])
def test_random_start_is_inside_ball_and_box(norm, eps):
    x, y = make_batch()
    torch.manual_seed(0)
    start = pgd(Flat(), x, y, eps=eps, step_size=0.1, steps=1, norm=norm, random_start=True,
                use_best=True)
    size = l2 if norm == "l2" else linf
    assert (size(start - x) <= eps + 1e-6).all()
    assert start.min() >= 0 and start.max() <= 1


def test_random_start_radius_away_from_the_box_faces():
    x, y = torch.full((8, 3, 8, 8), 0.5), torch.zeros(8, dtype=torch.long)
    torch.manual_seed(0)
    kw = {"step_size": 0.1, "steps": 1, "random_start": True, "use_best": True}
    l2_start = pgd(Flat(), x, y, eps=0.5, norm="l2", **kw)
    assert torch.allclose(l2(l2_start - x), torch.full((8,), 0.5), atol=1e-5)  # on the sphere
    linf_start = pgd(Flat(), x, y, eps=0.1, norm="linf", **kw)
    assert (linf(linf_start - x) <= 0.1 + 1e-6).all()
    assert (linf(linf_start - x) > 0.09).all()  # 192 uniform draws: the largest is near eps


# ----------------------------------------------------------------------------- an independent PGD


def reference_pgd(model, x, y, *, eps, step_size, steps, norm):
    """Textbook PGD, one sample at a time, without random start. Shares no code with arinv."""
    out = []
    for xi, yi in zip(x, y):
        x0, xa = xi.unsqueeze(0), xi.unsqueeze(0).clone()
        for _ in range(steps):
            leaf = xa.detach().clone().requires_grad_(True)
            F.cross_entropy(model(leaf), yi.view(1)).backward()
            g = leaf.grad
            with torch.no_grad():
                if norm == "l2":
                    gn = g.norm()
                    xa = xa + step_size * (g / gn if gn > 0 else g)
                    delta = xa - x0
                    dn = delta.norm()
                    if dn > eps:
                        delta = delta * (eps / dn)
                    xa = (x0 + delta).clamp(0, 1)
                else:
                    xa = xa + step_size * g.sign()
                    xa = torch.max(torch.min(xa, x0 + eps), x0 - eps).clamp(0, 1)
        out.append(xa)
    return torch.cat(out)


@pytest.mark.parametrize("norm,eps,step_size", [("l2", 0.8, 0.3), ("linf", 0.05, 0.02)])
def test_pgd_matches_independent_implementation(norm, eps, step_size):
    torch.manual_seed(0)
    model = tiny_net().double().eval()  # float64: no sign flips from rounding differences
    x, y = make_batch()
    x = x.double()
    ours = pgd(model, x, y, eps=eps, step_size=step_size, steps=5, norm=norm)
    ref = reference_pgd(model, x, y, eps=eps, step_size=step_size, steps=5, norm=norm)
    assert not torch.allclose(ref, x, atol=1e-3)  # the reference attack really moved
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


# ----------------------------------------------------------------------------- use_best


def test_use_best_is_at_least_the_last_iterate_and_the_clean_point(net):
    x, y = make_batch(n=16)
    # Linf steps far larger than eps overshoot, so the last iterate is often not the best.
    kw = {"eps": 0.3, "step_size": 0.5, "steps": 3, "norm": "linf"}
    best = ce(net, pgd(net, x, y, use_best=True, **kw), y)
    last = ce(net, pgd(net, x, y, use_best=False, **kw), y)
    clean = ce(net, x, y)
    assert (best >= last - 1e-5).all()
    assert (best >= clean - 1e-5).all()
    assert (best > last + 1e-4).any()  # use_best made a difference somewhere


# ----------------------------------------------------------------------------- side effects


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored(bn_net, training):
    bn_net.train(training)
    x, y = make_batch(n=4, size=16)
    pgd(bn_net, x, y, eps=0.5, step_size=0.2, steps=2, use_best=True)
    assert all(m.training == training for m in bn_net.modules())


def test_mixed_submodule_modes_are_restored(bn_net):
    bn_net.train()
    bn_net.bn1.eval()  # e.g. a frozen BatchNorm inside a model that is otherwise training
    x, y = make_batch(n=4, size=16)
    pgd(bn_net, x, y, eps=0.5, step_size=0.2, steps=1)
    assert bn_net.training and not bn_net.bn1.training


def test_batchnorm_running_stats_untouched(bn_net):
    bn_net.train()
    before = {k: v.clone() for k, v in bn_net.state_dict().items()}
    x, y = make_batch(n=4, size=16)
    pgd(bn_net, x, y, eps=0.5, step_size=0.2, steps=3, random_start=True, use_best=True)
    for k, v in bn_net.state_dict().items():
        assert torch.equal(v, before[k]), k
    # A train-mode forward does change them: the check above can fail.
    with torch.no_grad():
        bn_net(x)
    assert not torch.equal(bn_net.bn1.running_mean, before["bn1.running_mean"])


@pytest.mark.parametrize("use_best", [False, True])
def test_pgd_creates_no_parameter_grads(bn_net, use_best):
    x, y = make_batch(n=4, size=16)
    pgd(bn_net, x, y, eps=0.5, step_size=0.2, steps=2, random_start=True, use_best=use_best)
    assert all(p.grad is None for p in bn_net.parameters())


def test_pgd_leaves_existing_parameter_grads_alone(net):
    x, y = make_batch()
    F.cross_entropy(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    pgd(net, x, y, eps=0.5, step_size=0.2, steps=3)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("eps,steps", [(0.0, 5), (0.5, 0)])
def test_no_budget_returns_x_unchanged(net, eps, steps):
    x, y = make_batch()
    out = pgd(net, x, y, eps=eps, step_size=0.1, steps=steps, random_start=True)
    assert torch.equal(out, x) and out is not x


def test_negative_eps_or_steps_raise(net):
    x, y = make_batch()
    with pytest.raises(ValueError, match="eps"):
        pgd(net, x, y, eps=-0.1, step_size=0.1, steps=3)
    with pytest.raises(ValueError, match="steps"):
        pgd(net, x, y, eps=0.1, step_size=0.1, steps=-1)


def test_unknown_norm_raises_naming_it(net):
    x, y = make_batch()
    with pytest.raises(ValueError, match="l3"):
        pgd(net, x, y, eps=0.1, step_size=0.1, steps=2, norm="l3")


def test_norm_is_case_insensitive(net):
    x, y = make_batch()
    a = pgd(net, x, y, eps=0.1, step_size=0.05, steps=2, norm="Linf")
    b = pgd(net, x, y, eps=0.1, step_size=0.05, steps=2, norm="linf")
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- FGSM


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_fgsm_is_bounded_and_raises_the_loss(net, norm, eps):
    x, y = make_batch(n=16)
    torch.manual_seed(0)
    x_adv = fgsm(net, x, y, eps=eps, norm=norm)
    size = l2 if norm == "l2" else linf
    assert (size(x_adv - x) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert ce(net, x_adv, y).mean() > ce(net, x, y).mean()


def test_pgd_is_stronger_than_fgsm(trained):
    model, x, y, _ = trained
    eps = 4 / 255
    torch.manual_seed(0)
    fgsm_loss = ce(model, fgsm(model, x, y, eps=eps), y).mean()
    pgd_loss = ce(model, pgd(model, x, y, eps=eps, step_size=eps / 4, steps=10, norm="linf"),
                  y).mean()
    clean_loss = ce(model, x, y).mean()
    assert clean_loss < fgsm_loss < pgd_loss


# ----------------------------------------------------------------------------- a trained model


def test_trained_model_beats_chance(trained):
    *_, clean_acc = trained
    assert clean_acc > 0.4  # chance is 1/8


def test_attack_success_rises_with_eps(trained):
    model, x, y, clean_acc = trained
    epss = [0.0, 0.05, 0.25, 1.0, 4.0]
    accs = [accuracy(model, pgd(model, x, y, eps=e, step_size=2.5 * e / 10, steps=10), y)
            for e in epss]
    assert accs[0] == clean_acc
    slack = 1 / len(y)  # PGD is a heuristic: allow one image of non-monotonicity
    assert all(b <= a + slack for a, b in itertools.pairwise(accs)), accs
    assert accs[-1] <= 0.05, accs
    assert accs[-1] < accs[0] - 0.3, accs


# ----------------------------------------------------------------------------- adversarial_step


def test_adversarial_step_trains_on_adversarial_examples(net):
    x, y = make_batch(n=8)
    clean_loss = F.cross_entropy(net(x), y).item()
    before = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    out = adversarial_step(net, opt, x, y, AttackConfig(norm="l2", eps=1.0, steps=3))
    assert set(out) == {"adv_loss", "adv_acc"}
    assert torch.isfinite(out["adv_loss"]) and 0.0 <= out["adv_acc"].item() <= 1.0
    assert out["adv_loss"].item() > clean_loss  # it trained on attacked, not clean, inputs
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.training and all(p.grad is None for p in net.parameters())

