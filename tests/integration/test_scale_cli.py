"""'arinv eval-scale' end to end on a local sqlite MLflow store with tiny registered autoencoders
(untrained small AlexNet pairs: the command's plumbing, not the paper's numbers): the table, the
figure, MLflow parent and child runs with metrics at step L; models of the wrong kind, missing
models and mismatched resolutions refused before any work, naming the URI."""

from __future__ import annotations

import csv
import math

import pytest
from mlflow.tracking import MlflowClient
from toy_models import toy_pair

from pipelines.cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from pipelines.registry import register_autoencoder, register_encoder

    d = tmp_path_factory.mktemp("scale")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("models", artifact_location=str(d / "artifacts"))
    run = client.create_run(exp).info.run_id
    for seed, alias in ((1, "standard"), (2, "robust")):
        e, g = toy_pair(d, seed)
        register_autoencoder(uri, run, encoder_checkpoint=e, generator_checkpoint=g,
                             name="toy-autoencoder", alias=alias)
    register_encoder(uri, run, toy_pair(d, 3)[0], name="toy-encoder", alias="robust")
    e, g = toy_pair(d, 4, resolution=160)
    register_autoencoder(uri, run, encoder_checkpoint=e, generator_checkpoint=g,
                         name="toy-autoencoder-160", alias="robust")
    client.set_terminated(run)
    return {"dir": d, "uri": uri}


def _argv(store, tmp_path, *sets):
    base = ["standard=models:/toy-autoencoder@standard", "robust=models:/toy-autoencoder@robust",
            "factors=[1, 2, 3]", "images=4", "examples=1", "tile=32", "train_missing=false"]
    out = ["eval-scale", "--config", "tiny-sample-scale", "--workdir", str(tmp_path / "w"),
           "--tracking-uri", store["uri"], "--no-progress"]
    for s in [*base, *sets]:
        out += ["--set", s]
    return out


def test_eval_scale_writes_table_figure_and_mlflow_runs(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ARINV_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(_argv(store, tmp_path)) == 0
    out = capsys.readouterr().out
    w = tmp_path / "w"
    assert "| 3 (384 × 384) |" in out and str(w / "fig_a3.png") in out
    rows = list(csv.DictReader((w / "table_a2.csv").open()))
    assert [r["L"] for r in rows] == ["1", "2", "3"] and [r["size"] for r in rows] == \
        ["128", "256", "384"]
    for r in rows:
        for c in ("standard", "robust"):
            assert 0 < float(r[f"{c}_psnr"]) < 60 and -1 <= float(r[f"{c}_ssim"]) <= 1
            assert r[f"{c}_lpips"] == ""  # no LPIPS weights here: n/a, never a number
    from PIL import Image

    fig = Image.open(w / "fig_a3.png")  # 1 example x (input, standard, robust) rows, 3 tiles
    assert fig.size == (3 * 34 + 2, 3 * 34 + 2)

    client = MlflowClient(store["uri"])
    exp = client.get_experiment_by_name("arinv").experiment_id
    (parent,) = client.search_runs([exp], "tags.`arinv.kind` = 'scale'")
    assert parent.info.status == "FINISHED" and parent.data.params["factors"] == "[1, 2, 3]"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "table_a2.md", "table_a2.csv", "fig_a3.png", "results.json"}
    kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(k.info.run_name for k in kids) == ["tiny-sample-scale-robust",
                                                     "tiny-sample-scale-standard"]
    for k in kids:
        hist = client.get_metric_history(k.info.run_id, "psnr")
        assert [m.step for m in hist] == [1, 2, 3] and all(math.isfinite(m.value) for m in hist)
        col = k.info.run_name.rsplit("-", 1)[1]
        assert k.data.tags["arinv.model"] == f"models:/toy-autoencoder@{col}"


@pytest.mark.parametrize("sets, expected", [
    (["robust=models:/toy-encoder@robust"], r"models:/toy-encoder@robust.*autoencoder"),
    (["robust=models:/toy-autoencoder@nope"], r"models:/toy-autoencoder@nope.*has no alias.*Train the pair first"),
    (["robust=models:/toy-autoencoder-160@robust"], r"different resolutions.*128.*160"),
    (["factors=[0, 2]"], r"factors: distinct integers >= 1"),
    (["robust=/some/file.pt"], r"robust: a registry URI"),
])
def test_bad_models_and_config_are_refused_before_any_work(store, tmp_path, capsys, monkeypatch,
                                                           sets, expected):
    import re

    monkeypatch.setenv("ARINV_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(_argv(store, tmp_path, *sets)) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err, re.S), err
    assert not (tmp_path / "w" / "shards").exists()  # no image was read
