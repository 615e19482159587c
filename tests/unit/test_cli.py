import json
import subprocess
import sys

import pytest

from pipelines.cli import main

TINY = ["--set", "optim.epochs=1", "--set", "data.train_per_class=4", "--set",
        "data.val_per_class=2", "--set", "eval.pgd_eps=[0.5]", "--set", "eval.pgd_steps=2"]


def test_import_arinv_pulls_in_no_ray_mlflow_or_boto3():
    code = ("import sys, arinv, arinv.models, arinv.attacks, arinv.train.run, arinv.train.local, "
            "arinv.metrics.robustness, arinv.config, arinv.data.reader, arinv.experiments.table_a3; "
            "bad = [m for m in ('ray', 'mlflow', 'boto3', 'pipelines') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_library_imports_nothing_from_pipelines():
    """Statically or through importlib: no 'pipelines' anywhere in arinv/'s code."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "arinv"
    hits = [f"{p.relative_to(root.parent)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\bpipelines\b", line.split("#")[0]) and "import" in line
            or "import_module" in line]
    assert hits == []


def test_loading_a_model_imports_no_training_stack(tmp_path):
    """Consumers (pyfunc models, downstream code) load encoders and generators without the
    optimisers' home, the training loop or Ray."""
    from arinv.checkpoint import save_checkpoint
    from arinv.config import EncoderTrainConfig, to_dict
    from arinv.models import create_encoder

    model = create_encoder("alexnet_small", num_classes=8)
    path = save_checkpoint(tmp_path / "e.pt", kind="encoder", arch=model.arch,
                           modules={"model": model}, progress={"epoch": 1},
                           config=to_dict(EncoderTrainConfig()))
    code = (f"import sys; from arinv.models.load import load_encoder; load_encoder({str(path)!r}); "
            "print(sorted(m for m in sys.modules if m.startswith(('arinv.train', 'ray', "
            "'mlflow', 'pipelines'))))")
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
    code = main(["eval-robustness", "--checkpoint", str(wd / "checkpoint" / "state.pt"),
                 "--workdir", str(tmp_path / "eval"),
                 "--eps", "0.25", "1.0", "--steps", "3", "--autoattack-eps", "1.0",
                 "--autoattack-version", "custom", "--autoattack-attacks", "apgd-ce",
                 "--json", str(out_json)])
    rep = json.loads(out_json.read_text())
    assert code == (0 if all(c["passed"] for c in rep["checks"]) else 1)
    assert set(rep["pgd"]) == {"0.25", "1.0"} and set(rep["autoattack"]) == {"1.0"}
    assert rep["n"] == 16 and rep["clean"] * 16 == pytest.approx(round(rep["clean"] * 16))
    assert "AutoAttack" in capsys.readouterr().out


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval-robustness", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err


def test_eval_robustness_on_a_held_out_shard_set(tmp_path, capsys):
    """A model trained from shards is evaluated on a shard set (here: its run's own val/)."""
    wd = tmp_path / "run"
    assert main(["train-encoder", "--config", "tiny-sample-standard", "--workdir", str(wd),
                 "--local", "--no-progress", *TINY]) == 0
    val = wd / "shards" / "sample-4-2" / "val"
    out_json = tmp_path / "rob.json"
    assert main(["eval-robustness", "--checkpoint", str(wd / "checkpoint" / "state.pt"),
                 "--data", str(val), "--eps", "0.5", "--steps", "2", "--max-images", "8",
                 "--json", str(out_json)]) in (0, 1)
    assert json.loads(out_json.read_text())["n"] == 8
    assert f"8 images of {val}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--autoattack-eps", "0.5", "--autoattack-version", "custom"],
     "--autoattack-version custom: name the attacks"),
    ([], "cannot be read as a checkpoint"),
])
def test_bad_eval_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    assert main(["eval-robustness", "--checkpoint", str(bad), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_checkpoint_that_carries_code_is_refused(tmp_path, capsys):
    """A pickled object whose loading would run code is refused, naming the file."""
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "arinv-checkpoint/1", "kind": "encoder", "x": Payload()}, path)
    assert main(["eval-robustness", "--checkpoint", str(path)]) == 2
    cap = capsys.readouterr()
    assert "evil.pt: refused" in cap.err and "this ran" not in cap.out + cap.err


def test_an_unknown_registry_uri_is_one_line_naming_the_store(tmp_path, monkeypatch, capsys):
    """Commands run from a folder share ./mlflow.db; a models:/ URI it cannot resolve is a
    one-line error naming that store, before any training."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["train-generator", "--config", "tiny-sample-generator", "--local",
                 "--no-progress", "--set", "encoder.checkpoint=models:/arinv-nope@robust"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"models:/arinv-nope@robust: no registered model 'arinv-nope' at sqlite:///" \
           f"{tmp_path.resolve()}/mlflow.db" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [
    ["train-generator", "--config", "tiny-sample-generator", "--no-progress",
     "--set", "encoder.checkpoint=models:/arinv-x@robust"],
    ["quickstart", "--no-progress"],
    ["anomaly", "score", "--model", "models:/x@robust", "--data", "d", "--out", "o"],
])
def test_a_tracking_uri_with_a_password_is_refused_without_echoing_it(argv, tmp_path, capsys,
                                                                       monkeypatch):
    """Tracking URIs are logged and stored: one carrying a password is refused before any
    work, the password masked in the message, which says where credentials go instead."""
    monkeypatch.chdir(tmp_path)
    code = main([*argv, "--tracking-uri", "http://alice:hunter2-secret@mlflow.example:5000"])
    err = capsys.readouterr().err
    assert code == 2 and "hunter2-secret" not in err, err
    assert "http://alice:***@mlflow.example:5000 carries a password" in err
    assert "MLFLOW_TRACKING_PASSWORD" in err and not list(tmp_path.iterdir())
    if argv[0] == "quickstart":
        return  # the quickstart's store is the sqlite file in its workdir, not the environment's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://arinv:hunter2-secret@db/mlflow")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI: postgresql://arinv:***@db/mlflow" in err
    assert "hunter2-secret" not in err and "PGPASSWORD" in err


def test_a_relative_sqlite_uri_means_the_current_folder(tmp_path, monkeypatch):
    """'--tracking-uri sqlite:///arinv-quickstart/mlflow.db' (the README's form) names a file
    under the folder the command runs in, for the store and for new experiments' artifacts
    (a relative artifact location could not be written as a file URI)."""
    from pipelines.tracking import _artifact_location, checked_uri

    monkeypatch.chdir(tmp_path)
    assert checked_uri("sqlite:///qs/mlflow.db") == f"sqlite:///{tmp_path.resolve()}/qs/mlflow.db"
    assert _artifact_location("sqlite:///qs/mlflow.db", "demo") == \
        (tmp_path.resolve() / "qs" / "mlartifacts" / "demo").as_uri()
    assert checked_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert checked_uri("http://mlflow:5000") == "http://mlflow:5000"
