import pytest
import torch

from arinv.config import OptimConfig
from arinv.data.sample import sample_set
from arinv.metrics.robustness import RobustnessReport, accuracy, robustness_report, sanity_checks
from arinv.attacks.autoattack import autoattack_accuracy
from arinv.models import create_encoder
from arinv.train.steps import build_optimizer, standard_step


def _tensors(split, per_class):
    s = sample_set(split, per_class=per_class, size=32)
    return torch.from_numpy(s.images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(s.labels)


@pytest.fixture(scope="module")
def trained():
    """A small ResNet that beats chance on held-out photograph crops."""
    torch.manual_seed(0)
    x, y = _tensors("train", 24)
    model = create_encoder("resnet18_cifar_small", num_classes=8)
    opt, _ = build_optimizer(model, OptimConfig(lr=0.05, weight_decay=5e-4))
    for _ in range(8):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 32):
            idx = perm[i:i + 32]
            standard_step(model, opt, x[idx], y[idx])
    model.eval()
    xv, yv = _tensors("val", 6)
    return model, xv, yv


def test_trained_model_beats_chance(trained):
    model, x, y = trained
    assert accuracy(model, x, y) > 0.35  # chance is 0.125


def test_report_on_a_trained_model_passes_the_sanity_checks(trained):
    model, x, y = trained
    rep = robustness_report(model, x, y, eps_list=[0.1, 0.5, 2.0], steps=5, batch_size=64)
    assert rep.clean == pytest.approx(accuracy(model, x, y))
    assert rep.pgd[2.0] < rep.clean
    assert all(c["passed"] for c in rep.checks), rep.table()
    assert "PGD-5" in rep.table() and set(rep.as_dict()["pgd"]) == {"0.1", "0.5", "2.0"}


def test_sanity_checks_flag_gradient_masking_symptoms():
    rep = RobustnessReport(n=100, norm="l2", steps=10, clean=0.9,
                           pgd={0.5: 0.4, 1.0: 0.6}, pgd_more_steps={0.5: 0.5, 1.0: 0.6},
                           fgsm={0.5: 0.3, 1.0: 0.6}, autoattack={1.0: 0.7})
    failed = {c["name"] for c in sanity_checks(rep) if not c["passed"]}
    assert failed == {"robust accuracy non-increasing in eps", "PGD at least as strong as FGSM",
                      "more PGD steps never raise accuracy", "AutoAttack at least as strong as PGD"}
    ok = RobustnessReport(n=100, norm="l2", steps=10, clean=0.9, pgd={0.5: 0.4, 1.0: 0.2},
                          pgd_more_steps={0.5: 0.4, 1.0: 0.19}, fgsm={0.5: 0.5, 1.0: 0.3})
    assert all(c["passed"] for c in sanity_checks(ok))


def test_autoattack_reference_is_at_least_as_strong_as_pgd(trained):
    model, x, y = trained
    x, y = x[:12], y[:12]  # APGD-T attacks each of 9 target classes: few images keep it short
    pgd_acc = robustness_report(model, x, y, eps_list=[0.25], steps=10).pgd[0.25]
    aa = autoattack_accuracy(model, x, y, eps=0.25, norm="l2", version="custom",
                             attacks=["apgd-ce", "apgd-t"], batch_size=12)
    assert 0.0 <= aa <= pgd_acc + 1 / 12
    assert model.training is False


def test_autoattack_rejects_unknown_norm(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="AutoAttack norm"):
        autoattack_accuracy(model, x[:2], y[:2], eps=0.1, norm="l1")
