import json
import subprocess
import sys

import pytest

from arinv.cli import main

TINY = ["--set", "optim.epochs=1", "--set", "data.train_per_class=4", "--set",
        "data.val_per_class=2", "--set", "eval.pgd_eps=[0.5]", "--set", "eval.pgd_steps=2"]


def test_import_arinv_pulls_in_no_ray_mlflow_or_boto3():
    code = ("import sys, arinv, arinv.models, arinv.attacks, arinv.train.loop, arinv.metrics.robustness,"
            " arinv.config, arinv.cli, arinv.data.local; "
            "bad = [m for m in ('ray', 'mlflow', 'boto3') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("quickstart", "train-encoder", "eval-robustness", "examples:"):
        assert word in out


def test_config_command_prints_the_resolved_preset(capsys):
    assert main(["config", "alexnet-imagenet-robust", "--set", "data.source=sample"]) == 0
    out = capsys.readouterr().out
    assert "eps: 3.0" in out and "step_size: 0.5" in out and "epochs: 90" in out


def test_bad_config_exits_2_with_the_field_named(capsys):
    assert main(["train-encoder", "--config", "tiny-sample-robust", "--set", "attack.eps=-3"]) == 2
    assert "attack.eps: must be >= 0" in capsys.readouterr().err


def test_train_then_eval_robustness(tmp_path, capsys):
    wd = tmp_path / "run"
    assert main(["train-encoder", "--config", "tiny-sample-robust", "--workdir", str(wd),
                 "--local", "--no-progress", "--set", "attack.steps=2", *TINY]) == 0
    assert "clean accuracy" in capsys.readouterr().out
    out_json = tmp_path / "rob.json"
    code = main(["eval-robustness", "--checkpoint", str(wd / "checkpoints" / "last.pt"),
                 "--eps", "0.25", "1.0", "--steps", "3", "--autoattack-eps", "1.0",
                 "--autoattack-version", "custom", "--autoattack-attacks", "apgd-ce",
                 "--json", str(out_json)])
    rep = json.loads(out_json.read_text())
    assert code == (0 if all(c["passed"] for c in rep["checks"]) else 1)
    assert set(rep["pgd"]) == {"0.25", "1.0"} and set(rep["autoattack"]) == {"1.0"}
    assert rep["n"] == 16 and 0 <= rep["clean"] <= 1
    assert "AutoAttack" in capsys.readouterr().out


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval-robustness", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err
