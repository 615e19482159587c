"""Sweep planning and reporting without a cluster: trial configs, validation, concurrency,
Table A3 layout, best-trial choice, the best-weights preset."""

from __future__ import annotations

import csv
import io
import math

import pytest

from arinv.config import ConfigError, GeneratorTrainConfig, SweepConfig, load_config
from arinv.experiments import table_a3
from pipelines import sweep_report
from pipelines.sweep import (
    alias_for,
    plan,
    trial_concurrency,
    trial_resources,
    weights_config,
)


def sweep(*overrides):
    return load_config(SweepConfig, "tiny-sample-sweep", list(overrides))


def test_eps_trials_follow_table_a3():
    sw = sweep("eps=[0, 1.5]")
    enc0, _ = table_a3.trial_configs(sw, 0.0)
    assert enc0.attack is None  # eps 0 = standard training, attacked at 0.25 for the table
    assert 0.25 in enc0.eval.pgd_eps and enc0.name == "tiny-sample-sweep-eps0-encoder"
    enc, gen = table_a3.trial_configs(sw, 1.5)
    # the preset's 2 steps of 0.75 at eps 1, scaled with the column's radius
    assert enc.attack.eps == 1.5 and enc.attack.effective_step_size == pytest.approx(1.125)
    assert 1.5 in enc.eval.pgd_eps
    assert gen.encoder.checkpoint is None and gen.loss.gan == 0 and gen.loss.pix > 0
    assert gen.name == "tiny-sample-sweep-eps1.5-generator"
    assert table_a3.attack_radius(0.0, sw.standard_attack_eps) == 0.25
    assert table_a3.attack_radius(2.0, sw.standard_attack_eps) == 2.0
    assert SweepConfig().eps == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]  # the paper's grid
    assert len(plan(sw)) == 2


@pytest.mark.parametrize("override, field", [
    ("eps=[0, 0]", "eps"), ("eps=[-1]", "eps"), ("select=fid", "select"),
    ("max_concurrent=0", "max_concurrent"), ("name=a/b", "name"),
    ("standard_attack_eps=0", "standard_attack_eps"),
    ("search.pix=[1.0e-3]", "search.pix"), ("search.pix=[1.0, 0.1]", "search.pix"),
    ("search.metric=fid", "search.metric"),
])
def test_bad_sweep_fields_are_named(override, field):
    extra = ["search.encoder=models:/x@y", "search.feat=[0.01, 0.1]"] if field.startswith(
        "search") else []
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        sweep(*extra, override)


def test_trial_config_errors_name_the_sweep_field():
    with pytest.raises(ConfigError, match="(?s)encoder_set.*optim.epochs"):
        plan(sweep("encoder_set=[optim.epochs=0]"))
    with pytest.raises(ConfigError, match="trains without an attack"):
        plan(sweep("encoder=tiny-sample-standard"))
    with pytest.raises(ConfigError, match="inverts a resnet18_cifar encoder"):
        plan(sweep("generator=resnet18-cifar10-layer4", "shards=s3://bucket/c10"))


def test_weight_search_configs():
    sw = sweep("search.encoder=models:/arinv-alexnet_small@best", "search.pix=[1.0e-5, 1.0e-3]",
               "search.feat=[0.01, 0.01]", "search.grace_period=2")
    gen = weights_config(sw, {"pix": 3e-4, "feat": 0.01}, "t1")
    assert (gen.loss.pix, gen.loss.feat, gen.eval.every) == (3e-4, 0.01, 1)
    assert gen.encoder.checkpoint == "models:/arinv-alexnet_small@best"
    assert len(plan(sw)) == 2  # both corners of the space validate
    with pytest.raises(ConfigError, match="discriminator"):  # gan > 0 needs a discriminator
        plan(sweep("search.encoder=models:/m@a", "search.gan=[1.0, 10.0]"))
    with pytest.raises(ConfigError, match="grace_period"):
        plan(sweep("search.encoder=models:/m@a", "search.pix=[1.0e-5, 1.0e-3]",
                   "search.grace_period=15"))
    with pytest.raises(ConfigError, match="search.encoder"):
        sweep("search.pix=[1.0e-5, 1.0e-3]")


def test_concurrency_follows_the_resources_per_trial():
    sw = sweep("encoder_set=[scaling.num_workers=2, scaling.cpus_per_worker=3]")
    need = trial_resources(plan(sw))
    assert need == {"CPU": 7.0}  # the larger run's workers + one CPU for its data stream
    assert trial_concurrency({"CPU": 16.0}, need) == 2
    assert trial_concurrency({"CPU": 4.0}, need) == 1  # never zero: trials queue
    assert trial_concurrency({"CPU": 64.0, "GPU": 3.0}, {"CPU": 9.0, "GPU": 1.0}) == 3


def test_alias():
    assert alias_for(sweep("name=my.sweep"), None) == "my_sweep-best"
    for bad in ("latest", "v3", "a b"):
        with pytest.raises(ConfigError, match="alias"):
            alias_for(sweep(), bad)


def rows():
    base = {"attack_eps": 0.25, "status": "complete", "epochs": 2}
    return [
        {**base, "trial": "eps1", "eps": 1.0, "attack_eps": 1.0, "standard_acc": 0.81,
         "pgd_acc": 0.52, "psnr": 19.2, "ssim": 0.54, "lpips": 0.48},
        {**base, "trial": "eps0", "eps": 0.0, "standard_acc": 0.9493, "pgd_acc": 0.2829,
         "psnr": 14.7, "ssim": 0.30, "lpips": math.nan},
        {**base, "trial": "eps2", "eps": 2.0, "attack_eps": 2.0, "standard_acc": math.nan,
         "pgd_acc": math.nan, "psnr": 25.0, "ssim": math.nan, "lpips": math.nan,
         "status": "failed: worker died"},
    ]


def test_table_a3_layout():
    md, table = table_a3.table(rows())
    lines = md.splitlines()
    assert lines[0] == "| | ε = 0 | ε = 1 | ε = 2 |"
    assert lines[2] == "| Standard accuracy (%) | 94.93 | 81.00 | n/a |"
    assert lines[4] == "| attacked at ε | 0.25 | 1 | 2 |"
    assert lines[-1] == "| trial | complete | complete | failed: worker died |"
    parsed = list(csv.reader(io.StringIO(table)))
    assert parsed[0] == ["measure", "eps=0", "eps=1", "eps=2"]
    by = {r[0]: r[1:] for r in parsed[1:]}
    assert float(by["psnr"][0]) == 14.7 and by["lpips"] == ["", "0.48", ""]


def test_table_a3_row_takes_the_attack_radius_of_its_column():
    rob = {"clean": 0.9, "pgd": {"0.25": 0.3, "1.0": 0.6}}
    q = {"psnr": 20.0, "ssim": 0.5, "lpips": None}
    r0, r1 = table_a3.row(0.0, 0.25, rob, q), table_a3.row(1.0, 0.25, rob, q)
    assert (r0["attack_eps"], r0["pgd_acc"]) == (0.25, 0.3)
    assert (r1["attack_eps"], r1["pgd_acc"]) == (1.0, 0.6) and math.isnan(r1["lpips"])


def test_best_ignores_unfinished_trials_and_follows_the_metric():
    assert sweep_report.best(sweep(), rows())["trial"] == "eps1"  # eps2 failed
    assert sweep_report.best(sweep("select=lpips"), rows())["trial"] == "eps1"
    none = [{**r, "status": "stopped by ASHA after epoch 1"} for r in rows()]
    assert sweep_report.best(sweep(), none) is None


def test_best_weights_preset_round_trips(tmp_path):
    sw = sweep("search.encoder=models:/m@a", "search.pix=[1.0e-5, 1.0e-3]",
               "search.feat=[0.001, 0.1]", "generator_set=[optim.epochs=3]",
               f"search.preset_out={tmp_path / 'best.yaml'}")
    row = {"trial": "abc_00001", "lambda_pix": 3.3e-4, "lambda_feat": 0.02, "psnr": 12.0,
           "ssim": 0.4, "lpips": math.nan, "epochs": 3, "status": "complete"}
    path = sweep_report.write_preset(sw, row, tmp_path)
    cfg = load_config(GeneratorTrainConfig, str(path))
    assert (cfg.loss.pix, cfg.loss.feat, cfg.optim.epochs) == (3.3e-4, 0.02, 3)
    assert cfg.encoder.checkpoint == "models:/m@a" and cfg.name == "tiny-sample-sweep-best"
    md = sweep_report.search_table([row, {**row, "trial": "x", "psnr": 13.0,
                                          "status": "stopped by ASHA after epoch 1"}], "psnr")
    assert md.splitlines()[2].startswith("| x |")  # best metric first, whatever its status


def test_asha_never_has_a_rung_at_the_last_epoch():
    """A rung at the last epoch stopped a trial that had run all its epochs, before its final
    evaluation (CI, 2026-12-08): every rung must come before the last epoch, and a trial's
    results beyond the rungs must never be stopped."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from pipelines.sweep import asha

    for epochs, gp, rf in ((2, 1, 2), (8, 1, 2), (8, 3, 2), (4, 1, 2), (9, 1, 3), (5, 4, 2)):
        sched = asha(SimpleNamespace(grace_period=gp, reduction_factor=rf), epochs)
        (bracket,) = sched._brackets
        rungs = [m for m, _ in bracket._rungs]
        assert rungs and max(rungs) < epochs and min(rungs) == gp, (epochs, gp, rf, rungs)
        # two trials, the second worse at every epoch: stopped at most at a rung, never after
        sched.set_search_properties("val_psnr", "max")
        a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
        for t in (a, b):
            sched.on_trial_add(None, t)
        for e in range(1, epochs + 1):
            assert sched.on_trial_result(None, a, {"epoch": e, "val_psnr": 20.0}) == \
                TrialScheduler.CONTINUE
        action = TrialScheduler.CONTINUE
        for e in range(1, epochs + 1):
            action = sched.on_trial_result(None, b, {"epoch": e, "val_psnr": 10.0})
            if action == TrialScheduler.STOP:
                assert e in rungs and e < epochs
                break
        assert action == TrialScheduler.STOP  # the worse one is stopped at its first rung
