"""One-vs-all anomaly detection (Sec. A1) end to end on one real local Ray cluster and a real
MLflow store (sqlite), at toy size: encoders registered, ``arinv anomaly train`` (Ray Train,
registered autoencoder), ``arinv anomaly score`` (Ray Data actors, Parquet), ``arinv anomaly
eval`` (Ray Tune trials, Table A1, ROC plots, MLflow parent and child runs), and the errors a
user gets before any work starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from arinv.checkpoint import save_checkpoint
from arinv.config import AttackConfig, EncoderTrainConfig, to_dict
from arinv.data.reader import ShardBatches, write_sample_shards
from arinv.models import create_encoder
from pipelines import registry, tracking
from pipelines.cli import main as cli

POSITIVE, NEGATIVE = 5, 4  # hubble_deep_field (near black) vs immunohistochemistry (pink)
# 4 epochs of the positive class's 32 crops: 16 steps, enough for its generator to learn it
GEN = ["optim.batch_size=8", "optim.epochs=4", "optim.lr_g=3e-3", "eval.images=8",
       "eval.epoch_images=8", "eval.every=4", "scaling.cpus_per_worker=1"]
SCORING = ["--iters", "8", "--batch-size", "16", "--actors", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shards (8 classes, 32 training and 4 held-out crops each), a sqlite MLflow store and a
    standard and a robust small AlexNet registered as arinv-alexnet_small@standard / @robust
    (random weights: what matters here is the plumbing, and the generator learns the class)."""
    d = tmp_path_factory.mktemp("anomaly")
    shards = str(write_sample_shards(d / "sample", 32, 4, progress=False))
    uri = f"sqlite:///{d / 'mlflow.db'}"
    refs = {}
    for column, attack in (("standard", None), ("robust", AttackConfig(eps=0.5, steps=2))):
        torch.manual_seed(0)
        enc = create_encoder("alexnet_small", num_classes=8)
        cfg = EncoderTrainConfig(name=f"enc-{column}", attack=attack)
        cfg.encoder.name, cfg.encoder.num_classes = "alexnet_small", 8
        path = save_checkpoint(d / f"{column}.pt", kind="encoder", arch=enc.arch,
                               modules={"model": enc}, progress={"epoch": 1, "history": []},
                               config=to_dict(cfg))
        run_id = tracking.find_or_create_run(uri, "arinv", f"enc-{column}", run_name=column)
        registry.register_encoder(uri, run_id, path, name="arinv-alexnet_small", alias=column)
        refs[column] = "models:/arinv-alexnet_small@" + column
    return {"dir": d, "shards": shards, "uri": uri, **refs}


def _launch(world, workdir) -> list:
    return ["--tracking-uri", world["uri"], "--workdir", str(workdir), "--no-progress"]


@pytest.fixture(scope="module")
def trained(world, ray_cluster):
    """``arinv anomaly train``: the standard encoder's generator of the positive class."""
    d = world["dir"]
    args = ["anomaly", "train", "--encoder", world["standard"], "--positive", str(POSITIVE),
            "--config", "tiny-sample-anomaly-generator", "--shards", world["shards"],
            *[f"--set={s}" for s in GEN], *_launch(world, d / "train")]
    assert cli(args) == 0
    return "models:/arinv-anomaly-anomaly-class5@standard"


def test_train_registers_a_generator_of_the_positive_class_only(world, trained):
    client = mlflow.MlflowClient(world["uri"])
    mv = client.get_model_version_by_alias("arinv-anomaly-anomaly-class5", "standard")
    assert mv.tags["arinv.kind"] == "autoencoder"
    run = client.get_run(mv.run_id)
    # trained on the positive class only, at the paper's standard weights, no GAN, no augmentation
    assert run.data.params["data.classes"] == str([POSITIVE])
    assert float(run.data.params["loss.pix"]) == 2e-3 and float(run.data.params["loss.gan"]) == 0
    assert run.data.params["augment"] == "False"
    # one epoch = the positive class's 32 training images
    steps = client.get_metric_history(mv.run_id, "images")
    assert len(steps) == 4 and all(m.value == 32 for m in steps)


def test_score_separates_the_positive_class_through_ray_data(world, trained, tmp_path, capsys):
    out = tmp_path / "scores"
    args = ["anomaly", "score", "--model", trained, "--data", f"{world['shards']}/val",
            "--out", str(out), "--positive", str(POSITIVE), *SCORING,
            "--tracking-uri", world["uri"], "--workdir", str(tmp_path), "--no-progress"]
    assert cli(args) == 0
    from arinv.downstream.anomaly import auroc
    from pipelines.anomaly import read_scores

    s = read_scores(str(out))
    assert sorted(s["index"]) == list(range(32))  # every held-out image, once
    pair = np.isin(s["label"], [POSITIVE, NEGATIVE])
    auc = auroc(s["score"][pair], s["label"][pair] != POSITIVE)
    assert auc > 0.8, (auc, s)
    assert "AUROC" in capsys.readouterr().out

    # the Ray Data path computes exactly the bare function's scores (latents seeded by index)
    from arinv.downstream.anomaly import eq8_scores
    from pipelines.autoencoders import autoencoder_files, load_pair

    enc_file, gen_file = autoencoder_files(trained, world["uri"], None)
    enc, gen, layer, r, gcfg = load_pair(enc_file, gen_file)
    batches = ShardBatches(f"{world['shards']}/val", 8, resolution=r, train=False)
    x, y = next(iter(batches))
    bare = eq8_scores(enc, gen, x, layer, alpha_pix=gcfg.loss.pix, alpha_feat=gcfg.loss.feat,
                      iters=8, seeds=list(range(8)))
    torch.testing.assert_close(torch.from_numpy(s["score"][:8]), bare["score"].double(),
                               rtol=1e-4, atol=1e-6)


def test_score_refuses_bad_input_before_work(world, trained, tmp_path, capsys):
    base = ["anomaly", "score", "--out", str(tmp_path / "o"), "--tracking-uri", world["uri"],
            "--workdir", str(tmp_path), "--no-progress", *SCORING]
    val = f"{world['shards']}/val"
    # an encoder where an autoencoder is expected
    assert cli([*base, "--model", world["robust"], "--data", val]) == 2
    err = capsys.readouterr().err
    assert world["robust"] in err and "autoencoder" in err
    # a tap the generator does not invert
    assert cli([*base, "--model", trained, "--data", val, "--layer", "conv2"]) == 2
    err = capsys.readouterr().err
    assert "'conv5'" in err and "'conv2'" in err
    # a positive class the data does not have
    assert cli([*base, "--model", trained, "--data", val, "--positive", "12"]) == 2
    assert "8 classes" in capsys.readouterr().err
    # an image folder with an unreadable image
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 20, 30)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert cli([*base, "--model", trained, "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err
    assert not (tmp_path / "o").exists()


def test_image_folder_scoring_names_each_file(world, trained, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i, colour in enumerate([(0, 0, 0), (250, 120, 200), (5, 5, 5)]):
        Image.new("RGB", (64, 48), colour).save(folder / f"img{i}.png")
    out = tmp_path / "scores"
    assert cli(["anomaly", "score", "--model", trained, "--data", str(folder), "--out", str(out),
                "--tracking-uri", world["uri"], "--workdir", str(tmp_path / "w"),
                "--no-progress", *SCORING]) == 0
    from pipelines.anomaly import read_scores

    s = read_scores(str(out))
    paths = json.loads((tmp_path / "w" / "paths.json").read_text())
    assert len(s["score"]) == 3 and [Path(p).name for p in paths] == ["img0.png", "img1.png",
                                                                       "img2.png"]


def test_eval_protocol_table_a1_resumes(world, ray_cluster, tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(f"""name: toy-a1
standard: null
robust: {world['robust']}
generator: tiny-sample-anomaly-generator
generator_set: {json.dumps(GEN)}
robust_weights: [1.0e-3, 1.0e-2]
shards: {world['shards']}
classes: [{POSITIVE}]
scoring: {{iters: 4, batch_size: 16, actors: 1}}
""")
    args = ["anomaly", "eval", "--config", str(cfg), *_launch(world, tmp_path / "w")]
    assert cli(args) == 0
    w = tmp_path / "w"
    md = (w / "table_a1.md").read_text()
    assert "AR (ours)" in md and "ADGAN (paper)" in md and f"{POSITIVE} (hubble_deep_field)" in md
    result = json.loads((w / "results.json").read_text())
    assert result["complete"] and len(result["rows"]) == 1
    assert all(0 <= r["auroc"] <= 1 and r["n_positive"] == 4 and r["n_negative"] == 28
               for r in result["rows"])
    assert (w / f"roc_class{POSITIVE}.png").read_bytes()[:4] == b"\x89PNG"
    client = mlflow.MlflowClient(world["uri"])
    parent = client.get_run(result["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result['run_id']}'")
    trials = [c for c in children if c.data.tags.get("arinv.kind") == "anomaly-trial"]
    assert len(trials) == 1 and all("auroc" in c.data.metrics for c in trials)
    arts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"table_a1.md", f"roc_class{POSITIVE}.png"} <= arts
    # relaunched: the Tune experiment is restored, nothing is trained or scored again
    done = sorted((w / "ray" / "toy-a1" / "scores").glob("*.json"))
    assert len(done) == 1
    before = [p.stat().st_mtime_ns for p in done]
    assert cli(args) == 0
    assert json.loads((w / "results.json").read_text())["rows"] == result["rows"]
    assert [p.stat().st_mtime_ns for p in done] == before


def test_eval_refuses_wrong_kind_and_missing_class_before_work(world, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    base = f"""name: bad
generator: tiny-sample-anomaly-generator
shards: {world['shards']}
"""
    # a standard encoder in the robust column
    cfg.write_text(base + f"standard: null\nrobust: {world['standard']}\n")
    assert cli(["anomaly", "eval", "--config", str(cfg), *_launch(world, tmp_path / "w")]) == 2
    assert "standard encoder" in capsys.readouterr().err
    # a positive class the data does not have
    cfg.write_text(base + f"standard: {world['standard']}\nrobust: null\nclasses: [9]\n")
    assert cli(["anomaly", "eval", "--config", str(cfg), *_launch(world, tmp_path / "w")]) == 2
    assert "positive class [9]" in capsys.readouterr().err
    assert not (tmp_path / "w" / "trials").exists()


def test_train_refuses_a_positive_class_the_data_lacks(world, tmp_path, capsys):
    args = ["anomaly", "train", "--encoder", world["standard"], "--positive", "9", "--config",
            "tiny-sample-anomaly-generator", "--shards", world["shards"],
            *_launch(world, tmp_path / "t")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "data.classes: [9]" in err and "8 classes" in err
    assert not (tmp_path / "t" / "ray").exists()
