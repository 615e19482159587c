"""Ray Tune sweeps on a real local Ray cluster with a real MLflow store, at toy size: a 2-trial
Table A3 sweep whose trial processes are killed mid-training (Tune retries them and they resume
their runs) and whose driver is killed after the first trial and relaunched, then a loss-weight
search with ASHA that inverts the sweep's registered best encoder."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from arinv.config import GeneratorTrainConfig, SweepConfig, load_config

# the fixture kills processes of its own Ray cluster: not beside another busy cluster
pytestmark = pytest.mark.serial
ROOT = Path(__file__).resolve().parents[2]
ENCODER_EPOCHS = 2  # the trials are killed after their first checkpoint: mid-training
TOY = """extends: tiny-sample-sweep
name: toy
eps: [0.0, 1.0]
encoder_set: [data.train_per_class=4, data.val_per_class=2, optim.batch_size=8,
  eval.pgd_steps=2, eval.images=16, eval.epoch_images=8, "eval.pgd_eps=[0.5]", eval.every=1,
  scaling.cpus_per_worker=1, optim.epochs=%d, attack.steps=2]
generator_set: [optim.batch_size=8, optim.epochs=1, eval.images=8, eval.epoch_images=8, eval.ri_steps=0,
  scaling.cpus_per_worker=1]
""" % ENCODER_EPOCHS


def _children(client, exp_id, parent):
    return client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.fixture(scope="module")
def eps_sweep(tmp_path_factory):
    """The toy Table A3 sweep: its trials' processes SIGKILLed once an encoder checkpoint exists
    (Tune retries them), then its driver SIGKILLed once the first trial finished, relaunched."""
    from own_processes import own_processes

    d = tmp_path_factory.mktemp("sweep")
    (d / "toy.yaml").write_text(TOY)
    cmd = [sys.executable, "-m", "pipelines.sweep", "--config", str(d / "toy.yaml"),
           "--workdir", str(d / "w"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARINV_MODEL_CACHE": str(d / "cache")}
    killed = []
    with open(d / "first.log", "w") as log:
        # run from the sweep's folder: its MLflow store is ./mlflow.db there
        first = subprocess.Popen(cmd, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # its own group: Ray dies with it
        try:
            deadline = time.time() + 540
            while not (d / "w" / "trials" / "eps0" / "summary.json").is_file():
                assert first.poll() is None, (d / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "the first trial did not finish"
                if not killed and list((d / "w" / "ray").glob("toy-eps*-encoder/checkpoint_*/state.pt")):
                    # the trials' processes (this sweep's Ray runs under this test): their
                    # Train runs die with them; Tune retries each from its checkpoints
                    killed = own_processes("ray::ImplicitFunc")
                    for p in killed:
                        os.kill(p.pid, signal.SIGKILL)
                time.sleep(0.5)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    interrupted = first.returncode
    _wait_group_gone(first.pid)
    second = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return {"dir": d, "workdir": d / "w", "cmd": cmd, "env": env, "interrupted": interrupted,
            "killed_trials": len(killed), "out": second.stdout, "uri": f"sqlite:///{d / 'mlflow.db'}"}


def _wait_group_gone(pgid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode != 0:
            return
        time.sleep(0.5)


def test_interrupted_eps_sweep_resumes_and_fills_table_a3(eps_sweep):
    w, uri = eps_sweep["workdir"], eps_sweep["uri"]
    assert eps_sweep["interrupted"] == -signal.SIGKILL and eps_sweep["killed_trials"] >= 1
    assert "== resuming sweep toy from" in eps_sweep["out"]
    table = {r[0]: r[1:] for r in csv.reader((w / "table_a3.csv").open())}
    assert table["measure"] == ["eps=0", "eps=1"] and table["status"] == ["complete"] * 2
    for key in ("standard_acc", "pgd_acc", "attack_eps", "psnr", "ssim"):
        assert all(math.isfinite(float(v)) for v in table[key]), key
    assert [float(v) for v in table["attack_eps"]] == [0.25, 1.0]
    assert 5 < float(table["psnr"][0]) < 60 and 0 < float(table["ssim"][1]) <= 1
    # LPIPS needs its backbone weights, which this machine does not have: n/a, never a number
    assert table["lpips"] == ["", ""] and "| LPIPS ↓ | n/a | n/a |" in (w / "table_a3.md").read_text()
    for name in ("sweep.png", "reconstructions.png", "trials.csv", "results.json"):
        assert (w / name).stat().st_size > 0
    for row in json.loads((w / "results.json").read_text())["rows"]:
        state = torch.load(row["encoder_checkpoint"], weights_only=True)
        assert [h["epoch"] for h in state["progress"]["history"]] == list(
            range(1, ENCODER_EPOCHS + 1)), row["trial"]

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("arinv").experiment_id
    parents = client.search_runs([exp], "tags.`arinv.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = _children(client, exp, parents[0].info.run_id)
    assert sorted(t.info.run_name for t in trials) == ["eps0", "eps1"]
    for t in trials:
        assert t.info.status == "FINISHED" and {"psnr", "ssim", "standard_acc",
                                                "pgd_acc"} <= set(t.data.metrics)
        runs = _children(client, exp, t.info.run_id)
        assert sorted(r.info.run_name for r in runs) == [f"toy-{t.info.run_name}-encoder",
                                                         f"toy-{t.info.run_name}-generator"]
        enc = next(r for r in runs if r.info.run_name.endswith("encoder"))
        # neither the retried trial nor the relaunch trained an epoch twice: each logged once
        steps = [m.step for m in client.get_metric_history(enc.info.run_id, "images")]
        assert steps == list(range(1, ENCODER_EPOCHS + 1))
    best = parents[0].data.tags["arinv.best_trial"]
    best_trial = next(t for t in trials if t.info.run_name == best)
    auto = client.get_model_version_by_alias("arinv-alexnet_small-conv5-autoencoder", "toy-best")
    assert client.get_run(auto.run_id).data.tags["mlflow.parentRunId"] == best_trial.info.run_id
    enc = client.get_model_version_by_alias("arinv-alexnet_small", "toy-best")
    assert client.get_run(enc.run_id).info.run_name == f"toy-{best}-encoder"


def test_relaunch_with_another_config_is_refused(eps_sweep):
    r = subprocess.run([*eps_sweep["cmd"], "--set", "eps=[0.0, 2.0]"], cwd=eps_sweep["dir"],
                       env=eps_sweep["env"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "toy.sweep.json" in r.stderr and "eps=[0.0, 1.0]" in r.stderr and "another" in r.stderr


def test_relaunching_a_finished_sweep_reruns_and_registers_nothing(eps_sweep):
    client = mlflow.MlflowClient(eps_sweep["uri"])

    def versions():
        return {m: len(client.search_model_versions(f"name='{m}'")) for m in
                ("arinv-alexnet_small", "arinv-alexnet_small-conv5-autoencoder")}

    before = versions()
    log = eps_sweep["workdir"] / "arinv.log"  # Ray's and Tune's output, appended per launch
    seen = log.stat().st_size
    r = subprocess.run(eps_sweep["cmd"], cwd=eps_sweep["dir"], env=eps_sweep["env"],
                       capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== resuming sweep toy from" in r.stdout and "best trial" in r.stdout
    text, marker = log.read_bytes(), "Started training worker group"
    # the launches that trained logged their Ray Train runs there; this one started none
    assert marker.encode() in text[:seen]
    assert marker.encode() not in text[seen:] and marker not in r.stdout + r.stderr
    assert versions() == before


def test_loss_weight_search_with_asha_writes_the_best_preset(eps_sweep, tmp_path, monkeypatch):
    from pipelines.sweep import run_sweep
    from pipelines.trainer import Launch

    monkeypatch.setenv("ARINV_MODEL_CACHE", str(tmp_path / "cache"))
    uri = eps_sweep["uri"]
    shards = eps_sweep["workdir"] / "shards" / "sample-gray-4-2"  # the presets' grayscale set
    sw = load_config(SweepConfig, "tiny-sample-weights", [
        "name=toyw", f"shards={shards}", "search.encoder=models:/arinv-alexnet_small@toy-best",
        "search.samples=2", "search.grace_period=1", "search.seed=1",
        "generator_set=[optim.batch_size=8, optim.epochs=2, eval.images=8, eval.epoch_images=8, eval.ri_steps=0, "
        "scaling.cpus_per_worker=1]"])
    result = run_sweep(sw, Launch(workdir=tmp_path / "w", tracking_uri=uri, progress=False))
    rows = result["rows"]
    assert len(rows) == 2
    for r in rows:  # every trial ran to the end or was stopped by ASHA at its rung
        assert r["status"] in ("complete", "stopped by ASHA after epoch 1"), r["status"]
        assert 2e-5 <= r["lambda_pix"] <= 2e-3 and 1e-3 <= r["lambda_feat"] <= 1e-1
    done = [r for r in rows if r["status"] == "complete"]
    best = result["best"]
    assert best["psnr"] == max(r["psnr"] for r in done)
    preset = load_config(GeneratorTrainConfig, result["preset"])
    assert (preset.loss.pix, preset.loss.feat) == (best["lambda_pix"], best["lambda_feat"])
    assert preset.encoder.checkpoint == "models:/arinv-alexnet_small@toy-best"

    client = mlflow.MlflowClient(uri)
    auto = client.get_model_version_by_alias("arinv-alexnet_small-conv5-autoencoder", "toyw-best")
    assert auto.run_id == best["generator_run"]
    exp = client.get_experiment_by_name("arinv").experiment_id
    trials = _children(client, exp, result["run_id"])
    assert len(trials) == 2
    status = {t.info.run_name: t.info.status for t in trials}
    for r in rows:  # a stopped trial's runs do not stay RUNNING
        assert status[r["trial"]] == ("FINISHED" if r["status"] == "complete" else "KILLED")
    md = (tmp_path / "w" / "search.md").read_text()
    assert all(f"| {r['trial']} |" in md for r in rows)
