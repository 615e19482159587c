"""'arinv ablation' (Fig. A2) end to end on a real local Ray cluster and a real MLflow store
(sqlite), at toy size: a standard and a robust small AlexNet registered (random weights: the
command's plumbing, not the paper's numbers), the GAN criterion's generators trained on Ray
Train and the RI inversion as Tune trials, the table, the figure, MLflow parent and child runs,
a relaunch that reruns nothing; and bad inputs refused before Ray starts, naming the URI."""

from __future__ import annotations

import csv
import json

import pytest
import torch

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from arinv.checkpoint import save_checkpoint
from arinv.config import AttackConfig, EncoderTrainConfig, to_dict
from arinv.data.reader import write_sample_shards
from arinv.models import create_encoder
from pipelines import registry, tracking
from pipelines.cli import main as cli

# one epoch of 8 x 8 crops in batches of 8: the trials' plumbing, at the smallest size
GEN = ["generator.discriminator=alexnet_small_conv5", "loss.gan=100.0", "optim.epochs=1",
       "optim.batch_size=8", "eval.every=1", "eval.images=4", "eval.epoch_images=4",
       "eval.ri_steps=0", "scaling.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("ablation")
    shards = str(write_sample_shards(d / "sample", 8, 2, progress=False))
    uri = f"sqlite:///{d / 'mlflow.db'}"
    files = {}
    for arch, classes in (("alexnet_small", 8), ("resnet18_cifar", 10)):
        for column, attack in (("standard", None), ("robust", AttackConfig(eps=0.5, steps=2))):
            torch.manual_seed(0)
            enc = create_encoder(arch, num_classes=classes)
            cfg = EncoderTrainConfig(name=f"{arch}-{column}", attack=attack)
            cfg.encoder.name, cfg.encoder.num_classes = arch, classes
            files[arch, column] = save_checkpoint(
                d / f"{arch}-{column}.pt", kind="encoder", arch=enc.arch,
                modules={"model": enc}, progress={"epoch": 1, "history": []},
                config=to_dict(cfg))
            if arch == "alexnet_small":  # the pair the ablation inverts, from the registry
                run_id = tracking.find_or_create_run(uri, "arinv", f"{arch}-{column}",
                                                     run_name=column)
                registry.register_encoder(uri, run_id, files[arch, column],
                                          name="arinv-alexnet_small", alias=column)
    return {"dir": d, "shards": shards, "uri": uri,
            "resnet": str(files["resnet18_cifar", "robust"])}


def _config(world, tmp_path, **changes) -> str:
    cfg = {"name": "toy-a2", "standard": "models:/arinv-alexnet_small@standard",
           "robust": "models:/arinv-alexnet_small@robust", "generator": "tiny-sample-generator",
           "generator_set": GEN, "criteria": ["pixel_feat_gan", "ri"], "ri_steps": 3,
           "shards": world["shards"], "images": 4, "examples": 2, **changes}
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(cfg))  # YAML is a superset of JSON
    return str(path)


def _args(world, tmp_path, config) -> list:
    return ["ablation", "--config", config, "--tracking-uri", world["uri"],
            "--workdir", str(tmp_path / "w"), "--no-progress"]


def test_ablation_trials_table_figure_runs_and_relaunch(world, ray_cluster, tmp_path, capfd,
                                                        monkeypatch):
    monkeypatch.setenv("ARINV_MODEL_CACHE", str(tmp_path / "cache"))
    # with progress: the terminal shows a bar of trials and a line per trial; Tune's status
    # tables and the trials' Ray output go to the log
    args = [a for a in _args(world, tmp_path, _config(world, tmp_path)) if a != "--no-progress"]
    assert cli(args) == 0
    out, err = capfd.readouterr()
    w = tmp_path / "w"
    assert "| Pixel + feature + GAN |" in out and str(w / "fig_a2.png") in out
    assert "== ablation toy-a2: 4 trials" in out
    for name in ("pixel_feat_gan standard", "pixel_feat_gan robust", "ri standard", "ri robust"):
        assert f"   ablation toy-a2: trial {name} done (psnr " in out
    assert "4/4" in err and "Trial status" not in out + err
    assert "Trial status" in (w / "arinv.log").read_text()
    assert f"log:        {w / 'arinv.log'}" in out
    rows = list(csv.DictReader((w / "table_fig_a2.csv").open()))
    assert [r["criterion"] for r in rows] == ["pixel_feat_gan", "ri"]
    for r in rows:
        for c in ("standard", "robust"):
            assert 0 < float(r[f"{c}_psnr"]) < 60 and -1 <= float(r[f"{c}_ssim"]) <= 1
            assert r[f"{c}_lpips"] == ""  # no LPIPS weights here: n/a, never a number
    from PIL import Image

    fig = Image.open(w / "fig_a2.png")  # ground truth + 2 criteria x 2 encoders, 2 examples
    assert fig.size[1] == 5 * 130 + 2 and fig.size[0] > 2 * 130 + 2
    result = json.loads((w / "results.json").read_text())
    assert result["complete"] and len(result["rows"]) == 4

    client = mlflow.MlflowClient(world["uri"])
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["arinv.kind"] == "ablation"
    assert {"table_fig_a2.md", "fig_a2.png", "results.json"} <= {
        a.path for a in client.list_artifacts(result["run_id"])}
    kids = client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{result['run_id']}'")
    trials = {k.info.run_name: k for k in kids
              if k.data.tags.get("arinv.kind") == "ablation-trial"}
    assert sorted(trials) == ["pixel_feat_gan-robust", "pixel_feat_gan-standard", "ri-robust",
                              "ri-standard"]
    assert all("psnr" in t.data.metrics for t in trials.values())
    # the GAN criterion's generator runs are children of their trials, with a discriminator
    gan = client.search_runs([parent.info.experiment_id],
                             f"tags.`mlflow.parentRunId` = "
                             f"'{trials['pixel_feat_gan-robust'].info.run_id}'")
    assert len(gan) == 1 and gan[0].data.params["loss.gan"] == "100.0"
    assert gan[0].data.params["generator.discriminator"] == "alexnet_small_conv5"

    # relaunched: the Tune experiment is restored, nothing is trained or measured again
    done = sorted((w / "ray" / "toy-a2" / "cells").glob("*.json"))
    assert len(done) == 4
    before = [p.stat().st_mtime_ns for p in done]
    assert cli(args) == 0
    assert json.loads((w / "results.json").read_text())["rows"] == result["rows"]
    assert [p.stat().st_mtime_ns for p in done] == before


@pytest.mark.parametrize("changes, expected", [
    ({"standard": "models:/arinv-alexnet_small@robust"},
     r"standard: models:/arinv-alexnet_small@robust holds an adversarially trained encoder"),
    ({"robust": "RESNET"},  # a checkpoint file of another architecture
     r"robust: \S+resnet18_cifar-robust.pt holds a resnet18_cifar encoder.*inverts "
     r"alexnet_small.conv5"),
    ({"robust": "models:/arinv-alexnet_small@nope"},
     r"models:/arinv-alexnet_small@nope.*no alias.*Train the pair first"),
    ({"generator_set": [g for g in GEN if g != "loss.gan=100.0"] + ["loss.gan=0"]},
     r"full criterion.*loss.gan=0"),
    ({"criteria": ["pixel", "bogus"]}, r"criteria: distinct criteria of"),
])
def test_bad_input_is_refused_before_ray_starts(world, tmp_path, capsys, monkeypatch, changes,
                                                 expected):
    import re

    monkeypatch.setenv("ARINV_MODEL_CACHE", str(tmp_path / "cache"))
    changes = {k: world["resnet"] if v == "RESNET" else v for k, v in changes.items()}
    assert cli(_args(world, tmp_path, _config(world, tmp_path, **changes))) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err, re.S), err
    assert not (tmp_path / "w" / "ray").exists()  # no Tune experiment was started
