import copy

import pytest
import torch
import torch.nn as nn

from arinv.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from arinv.config import AttackConfig, EncoderTrainConfig, OptimConfig, load_config
from arinv.models import create_encoder
from arinv.models.load import load_encoder
from arinv.train.local import fit_local as fit_encoder
from arinv.train.steps import adversarial_step, build_optimizer, standard_step


def tiny_net(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, num_classes))


def test_standard_step_drives_loss_down_on_a_fixed_batch():
    model = tiny_net()
    opt, _ = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0))
    x = torch.rand(16, 3, 8, 8)
    y = x.mean((2, 3)).argmax(1)  # learnable: the brightest channel
    first = float(standard_step(model, opt, x, y)["loss"])
    for _ in range(150):
        last = float(standard_step(model, opt, x, y)["loss"])
    assert last < 0.5 * first


def test_gradient_accumulation_matches_the_full_batch():
    a = tiny_net()
    b = copy.deepcopy(a)
    opt_a, _ = build_optimizer(a, OptimConfig(lr=0.1))
    opt_b, _ = build_optimizer(b, OptimConfig(lr=0.1))
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    standard_step(a, opt_a, x, y)
    standard_step(b, opt_b, x[:4], y[:4], loss_scale=0.5, update=False)
    standard_step(b, opt_b, x[4:], y[4:], loss_scale=0.5, update=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_adversarial_step_trains_on_perturbed_inputs():
    model = create_encoder("resnet18_cifar_small", num_classes=4)
    opt, _ = build_optimizer(model, OptimConfig(lr=0.05))
    before = copy.deepcopy(model.state_dict())
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 4, (8,))
    out = adversarial_step(model, opt, x, y, AttackConfig(eps=0.5, steps=2))
    assert set(out) == {"adv_loss", "adv_acc"} and torch.isfinite(out["adv_loss"])
    assert model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("conv1.weight" in k for k in changed)


def test_lr_is_divided_by_ten_every_30_epochs():
    opt, sched = build_optimizer(tiny_net(), OptimConfig(lr=0.1))
    lrs = []
    for _ in range(90):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[29] == pytest.approx(0.1)
    assert lrs[30] == pytest.approx(0.01) and lrs[60] == pytest.approx(0.001)


def test_checkpoint_round_trip_and_wrong_architecture_refused(tmp_path):
    model = create_encoder("alexnet_small", num_classes=8)
    opt, sched = build_optimizer(model, OptimConfig())
    path = save_checkpoint(tmp_path / "c.pt", kind="encoder", arch=model.arch,
                           modules={"model": model, "optimizer": opt, "scheduler": sched},
                           progress={"epoch": 3})
    expected_next = torch.rand(3)
    other = create_encoder("alexnet_small", num_classes=8)
    payload = load_checkpoint(path, kind="encoder", arch=other.arch, modules={"model": other})
    assert payload["progress"]["epoch"] == 3
    assert torch.equal(torch.rand(3), expected_next)  # RNG state restored
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    wrong = create_encoder("alexnet_small", num_classes=10)
    with pytest.raises(CheckpointError, match=r"c\.pt: was saved from a different architecture"
                       r".*num_classes: checkpoint 8 vs run 10"):
        load_checkpoint(path, kind="encoder", arch=wrong.arch, modules={"model": wrong})
    with pytest.raises(CheckpointError, match="holds a encoder checkpoint, this run needs a generator"):
        load_checkpoint(path, kind="generator", arch=model.arch, modules={"model": model})


def test_truncated_checkpoint_is_refused_with_its_name(tmp_path):
    model = create_encoder("resnet18_cifar_small")
    path = save_checkpoint(tmp_path / "last.pt", kind="encoder", arch=model.arch,
                           modules={"model": model}, progress={"epoch": 1})
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot be read as a checkpoint"):
        load_checkpoint(path, kind="encoder", arch=model.arch, modules={"model": model})


def _tiny(robust: bool, epochs: int):
    common = [f"optim.epochs={epochs}", "data.train_per_class=4", "data.val_per_class=2",
              "optim.batch_size=16", "eval.pgd_eps=[0.5]", "eval.pgd_steps=2",
              "runtime.device=cpu"]  # CPU kernels are deterministic: resume must be exact
    if robust:
        return load_config(EncoderTrainConfig, "tiny-sample-robust", common + ["attack.steps=2"])
    return load_config(EncoderTrainConfig, "tiny-sample-standard", common)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = fit_encoder(_tiny(True, 2), tmp_path / "straight", progress=False)
    fit_encoder(_tiny(True, 1), tmp_path / "resumed", progress=False)
    # as if the process died after its checkpoint, before epoch 1's metrics were delivered
    (tmp_path / "resumed" / "metrics.jsonl").unlink()
    logs = []
    resumed = fit_encoder(_tiny(True, 2), tmp_path / "resumed", progress=False, log=logs.append)
    assert any("checkpoint of epoch 1 found: resuming at epoch 2/2" in m for m in logs)
    import json

    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # epoch 1 logged again, once
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a, _ = load_encoder(straight["checkpoint"])
    b, _ = load_encoder(resumed["checkpoint"])
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=k)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    fit_encoder(_tiny(False, 1), tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match=r"another config \(attack.eps: checkpoint None vs now 0.5"):
        fit_encoder(_tiny(True, 2), tmp_path / "run", progress=False)


def test_num_classes_mismatch_with_data_is_refused_before_training(tmp_path):
    from arinv.config import ConfigError

    cfg = load_config(EncoderTrainConfig, "tiny-sample-standard", ["encoder.num_classes=10"])
    with pytest.raises(ConfigError, match="encoder.num_classes: is 10 but .* has 8 classes"):
        fit_encoder(cfg, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint").exists()


def test_lowering_the_epochs_below_a_checkpoint_evaluates_without_training(tmp_path):
    fit_encoder(_tiny(False, 2), tmp_path / "run", progress=False)
    (tmp_path / "run" / "checkpoint" / "report.json").unlink()  # as after epoch 2 of 4
    out = fit_encoder(_tiny(False, 1), tmp_path / "run", progress=False)
    assert [h["epoch"] for h in out["history"]] == [1, 2] and out["robustness"]["n"] == 16


def test_an_encoder_trains_under_the_warm_up_eps_of_each_epoch():
    """The task reads the epoch from its (checkpointed) scheduler: the epoch's attack eps is
    logged with its lr, and a rebuilt task resumes the ramp where the scheduler left it."""
    from arinv.train.tasks import EncoderTask

    cfg = load_config(EncoderTrainConfig, "tiny-sample-robust",
                      ["attack.warmup_epochs=3", "attack.steps=1", "encoder.resolution=32",
                       "encoder.name=resnet18_cifar_small"])
    task = EncoderTask(cfg)
    modules = task.build(torch.device("cpu"))
    task.wrap(lambda m: m)
    g = torch.Generator().manual_seed(0)
    batch = [(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g),
              torch.tensor([0, 1, 2, 3]))]
    seen = []
    for _ in range(2):
        assert "adv_acc" in task.train_epoch(batch, progress=False)
        seen.append(task.end_epoch()["attack_eps"])
    assert seen == pytest.approx([cfg.attack.eps / 3, 2 * cfg.attack.eps / 3])
    again = EncoderTask(cfg)
    again.build(torch.device("cpu"))["scheduler"].load_state_dict(modules["scheduler"].state_dict())
    assert again.end_epoch()["attack_eps"] == pytest.approx(cfg.attack.eps)


def test_channels_last_on_cpu_changes_the_layout_not_the_step():
    """runtime.channels_last puts the model and batch in NHWC on CPU too (oneDNN runs it
    faster: benchmarks/gan_step.py); an adversarial step gives the NCHW step's result."""
    from arinv.train.runtime import prepare_batch, prepare_model

    torch.manual_seed(0)
    base = create_encoder("alexnet_small", num_classes=4)
    xb, yb = torch.randint(0, 256, (4, 3, 128, 128), dtype=torch.uint8), torch.arange(4)
    attack = AttackConfig(norm="l2", eps=1.0, steps=2, step_size=0.75, random_start=False)
    out = {}
    for cl in (False, True):
        model = prepare_model(copy.deepcopy(base), torch.device("cpu"), cl)
        x, y = prepare_batch(xb, yb, torch.device("cpu"), cl)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl
        assert x.is_contiguous(memory_format=torch.channels_last) == cl
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0
        opt, _ = build_optimizer(model, OptimConfig(lr=0.1))
        torch.manual_seed(1)  # the same dropout masks
        out[cl] = (float(adversarial_step(model, opt, x, y, attack)["adv_loss"]),
                   torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-4)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-3, atol=1e-5)
