"""The quickstart, the main job, at toy size on a local cluster of its own; then one 2-node Ray
cluster (``ray.cluster_utils.Cluster``) shared by the module's cluster tests, with what a real
cluster has: shards and Ray Train storage on S3 (the loopback S3-protocol server), and a real
``mlflow server`` process whose artifacts live on that S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")


def test_quickstart_main_job_at_toy_size(tmp_path, capfd):
    """End to end at toy size; the terminal gets the stage lines, the report and where things
    are (last), Ray's own output goes to WORKDIR/arinv.log."""
    from pipelines.cli import main

    toy = ["data.train_per_class=8", "data.val_per_class=4", "optim.batch_size=8",
           "optim.epochs=1", "attack.steps=2", "eval.pgd_steps=2", "eval.images=8",
           "eval.epoch_images=8", "eval.ri_steps=2"]
    args = ["quickstart", "--workdir", str(tmp_path), "--no-progress"]
    for o in toy:
        args += ["--set", o]
    assert main(args) == 0
    out, err = capfd.readouterr()
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Robustness:** under L2 PGD at ε = 2 ")
    assert report.splitlines()[3].startswith("**Reconstruction:** the robust autoencoder")
    assert "== training the robust encoder (tiny-gray-robust" in out
    assert "   standard encoder: clean accuracy" in out
    log = (tmp_path / "arinv.log").read_text()
    for ray_line in ("Reporting training result", "Checkpoint successfully created"):
        assert ray_line in log and ray_line not in out + err
    assert out.rstrip().splitlines()[-4:] == [
        f"log:     {tmp_path / 'arinv.log'} (Ray's and the workers' output; --verbose shows "
        "it here)", f"report:  {tmp_path / 'report.md'}",
        f"grid:    {tmp_path / 'reconstructions.png'}",
        f"MLflow:  mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}  (then "
        "open http://127.0.0.1:5000)"]
    assert "| standard (models:/arinv-alexnet_small@standard) |" in report
    assert "| robust (models:/arinv-alexnet_small-conv5-autoencoder@robust) |" in report
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000
    assert "reconstruction is drawn from 576 numbers (conv5 of alexnet_small" in report
    results = json.loads((tmp_path / "results.json").read_text())
    for kind in ("standard", "robust"):
        q = results["generators"][kind]["quality"]
        assert np.isfinite(q["psnr"]) and 0 < q["ssim"] <= 1
    # everything under the workdir: MLflow store, artifacts, Ray storage, shards, model cache
    assert {p.name for p in tmp_path.iterdir()} >= {"mlflow.db", "mlartifacts", "ray", "shards",
                                                    "report.md", "encoders", "generators"}
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = {m.name for m in client.search_registered_models()}
    assert names == {"arinv-alexnet_small", "arinv-alexnet_small-conv5-autoencoder"}
    report_run = client.search_runs(
        [client.get_experiment_by_name("arinv-quickstart").experiment_id],
        "tags.`arinv.kind` = 'report'")[0]
    assert {a.path for a in client.list_artifacts(report_run.info.run_id)} >= {
        "report.md", "reconstructions.png", "robustness.png"}

    # relaunched with the same name and storage: nothing trains, nothing new is registered
    checkpoints = sorted((tmp_path / "ray").glob("*/checkpoint_*"))
    versions = {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
                for m in client.search_registered_models()}
    assert main(args) == 0
    out = capfd.readouterr().out
    assert out.count("nothing to train") == 4
    assert sorted((tmp_path / "ray").glob("*/checkpoint_*")) == checkpoints
    assert {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
            for m in client.search_registered_models()} == versions
    check_demos_and_denoise_cli(tmp_path, client, capfd)


DEMO_TOY = ["data.train_per_class=8", "data.val_per_class=4", "optim.batch_size=8",
            "optim.epochs=1", "eval.images=8", "eval.epoch_images=8",
            "scaling.cpus_per_worker=1"]


def check_demos_and_denoise_cli(workdir, client, capfd):
    """The Sec. A3 applications on the quickstart's models: 'arinv demo style' trains and
    registers the conv2 / conv1 generators of both encoders and stylizes with each set;
    'arinv demo denoise' trains both wavelet denoisers (Tables A8/A9) on Ray Train and
    tabulates them; then 'arinv denoise' / 'denoise eval' from the registry, and a model of
    the wrong kind refused by URI."""
    from PIL import Image
    from skimage import data

    from pipelines.cli import main
    from pipelines.demos import STYLE_PAIRS

    demo = ["--workdir", str(workdir), "--no-progress"]
    for o in DEMO_TOY:
        demo += ["--set", o]
    assert main(["demo", "style", *demo]) == 0
    out = capfd.readouterr().out
    assert "running the quickstart first" not in out and "style.png" in out
    assert (workdir / "style" / "style.png").stat().st_size > 1000
    for kind in ("standard", "robust"):
        outs = sorted((workdir / "style" / kind).glob("*.png"))
        assert [f.stem for f in outs] == sorted(f"{c}_{s}" for c, s in STYLE_PAIRS)
        assert Image.open(outs[0]).size[0] == 128  # the content's size, not the encoder's
    for level in ("conv1", "conv2"):
        mv = client.get_model_version_by_alias(f"arinv-alexnet_small-{level}-autoencoder",
                                               "robust")
        assert mv.tags["arinv.kind"] == "autoencoder"

    assert main(["demo", "denoise", *demo]) == 0
    out = capfd.readouterr().out
    assert "8 images, clipped white Gaussian noise, sigma 50/255" in out
    assert "robust - standard denoiser: PSNR" in out
    result = json.loads((workdir / "denoise" / "result.json").read_text())
    quality = result["trained"]["tiny-sample-denoiser-robust"]["quality"]
    assert quality["n"] == 8 and "noisy" in quality
    values = result["table"]["methods"]
    assert set(values) == {"noisy input", "non-local means (scikit-image)",
                           "standard (models:/arinv-alexnet_small-denoiser@standard)",
                           "robust (models:/arinv-alexnet_small-denoiser@robust)"}
    # the classical baseline with the true sigma must beat the noisy input
    assert values["non-local means (scikit-image)"]["psnr"] > values["noisy input"]["psnr"]
    exp = client.get_experiment_by_name("arinv-quickstart").experiment_id
    for kind, files in (("style-demo", {"style.png", "robust"}),
                        ("denoise-demo", {"denoise_eval.md", "denoise_eval.png"})):
        (run,) = client.search_runs([exp], f"tags.`arinv.kind` = '{kind}'")
        assert files <= {a.path for a in client.list_artifacts(run.info.run_id)}

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    photos = workdir / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[::5, ::4]).save(photos / "astronaut.png")  # 103 x 128
    Image.fromarray(data.coffee()[::6, ::7]).save(photos / "coffee.png")        # 67 x 86
    base = ["--encoder", "alexnet_small", "--tracking-uri", uri]
    assert main(["denoise", *base, "--in", str(photos), "--out", str(workdir / "out")]) == 0
    for f in photos.iterdir():
        assert Image.open(workdir / "out" / f.name).size == Image.open(f).size
    assert main(["denoise", "eval", *base, "--clean", str(photos), "--robust", "robust",
                 "--workdir", str(workdir / "eval")]) == 0
    assert "2 images, clipped white Gaussian noise, sigma 50/255" in capfd.readouterr().out
    md = (workdir / "eval" / "denoise_eval.md").read_text()
    for row in ("| noisy input |", "| robust (models:/arinv-alexnet_small-denoiser@robust) |",
                "| non-local means (scikit-image) |"):
        assert row in md
    (ev,) = client.search_runs([client.get_experiment_by_name("arinv").experiment_id],
                               "tags.`arinv.kind` = 'denoise-eval'")
    assert "robust_psnr" in ev.data.metrics
    # an encoder where a denoiser belongs: refused naming the URI, before any image is written
    assert main(["denoise", *base, "--in", str(photos), "--out", str(workdir / "bad"),
                 "--model", "models:/arinv-alexnet_small@robust"]) == 2
    err = capfd.readouterr().err
    assert "models:/arinv-alexnet_small@robust: has no denoiser checkpoint (an arinv encoder" \
        in err
    assert not (workdir / "bad").exists()

@pytest.fixture(scope="module")
def two_nodes(s3_server, tmp_path_factory):
    """A head and a worker node of 2 CPUs each, started with the S3 server's settings and a
    shard and model cache of their own (nodes inherit the environment they start in), and
    this process connected to it until the module ends."""
    from aws_settings import point_aws_at
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        point_aws_at(s3_server, mp, tmp_path_factory)
        mp.setenv("ARINV_CACHE_DIR", str(tmp_path_factory.mktemp("shard-cache")))
        mp.setenv("ARINV_MODEL_CACHE", str(tmp_path_factory.mktemp("models")))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        try:
            cluster.add_node(num_cpus=2)
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_sweep_on_two_nodes_with_s3_storage_and_mlflow_server(two_nodes, s3_env, s3_prefix,
                                                             mlflow_server, tmp_path):
    """A Table A3 sweep as a cluster runs it: Tune experiment and Ray Train checkpoints on S3
    (the generator reads its encoder from there), runs and registry on the MLflow server."""
    from arinv.config import SweepConfig, load_config
    from arinv.data import storage
    from arinv.data.reader import write_sample_shards
    from pipelines.sweep import run_sweep
    from pipelines.trainer import Launch

    # the sweep presets' task: the 16-class grayscale set
    local = write_sample_shards(tmp_path / "shards", 4, 2, progress=False, name="sample-gray")
    shards = s3_prefix + "shards"
    for split in ("train", "val"):
        storage.upload_dir(local / split, f"{shards}/{split}")
    sw = load_config(SweepConfig, "tiny-sample-sweep", [
        "name=s3sweep", "eps=[1.0]", f"shards={shards}",
        "encoder_set=[data.train_per_class=4, optim.batch_size=8, optim.epochs=1, attack.steps=2,"
        " eval.pgd_steps=2, eval.images=16, eval.every=0, scaling.cpus_per_worker=1]",
        "generator_set=[optim.batch_size=8, optim.epochs=1, eval.images=8, eval.epoch_images=8, eval.ri_steps=0, "
        "scaling.cpus_per_worker=1]"])
    run = Launch(workdir=tmp_path / "w", storage_path=s3_prefix + "runs",
                 tracking_uri=mlflow_server.uri, experiment="sweeps", progress=False)
    r = run_sweep(sw, run)
    (row,) = r["rows"]
    assert row["status"] == "complete" and np.isfinite(row["psnr"])
    assert row["encoder_checkpoint"].startswith(s3_prefix + "runs/s3sweep-eps1-encoder/")
    keys = storage.list_prefix(s3_prefix + "runs/")
    assert any("/s3sweep/" in k for k in keys)  # the Tune experiment, restorable from S3
    assert storage.exists(s3_prefix + "runs/s3sweep.sweep.json")
    client = mlflow.MlflowClient(mlflow_server.uri)
    trials = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                f"tags.`mlflow.parentRunId` = '{r['run_id']}'")
    assert [t.info.run_name for t in trials] == ["eps1"]
    mv = client.get_model_version_by_alias("arinv-alexnet_small-conv5-autoencoder",
                                           "s3sweep-best")
    assert mv.status == "READY" and mv.run_id == row["generator_run"]
    # no credential anywhere the sweep wrote: the S3 keys the nodes had in their environment
    # are in no stored object (checkpoints, Tune's stored configs and results, MLflow
    # artifacts), no local output, no MLflow param or tag
    secrets = [s3_env.secret_key.encode(), s3_env.access_key.encode()]
    leaks = []
    for prefix in (s3_prefix, f"s3://{mlflow_server.bucket}/{mlflow_server.artifacts_prefix}/"):
        for key in storage.list_prefix(prefix):
            if key.endswith("/"):  # a folder marker object, no content
                continue
            body = storage.read_bytes(key)
            leaks += [key for sec in secrets if sec in body]
    for f in (p for p in tmp_path.rglob("*") if p.is_file()):
        body = f.read_bytes()
        leaks += [str(f) for sec in secrets if sec in body]
    exp = client.get_experiment_by_name("sweeps").experiment_id
    for found in client.search_runs([exp]):
        text = repr((found.data.params, found.data.tags)).encode()
        leaks += [found.info.run_id for sec in secrets if sec in text]
    assert not leaks, leaks


def test_a_local_run_starts_its_own_cluster_beside_a_running_one(two_nodes, tmp_path):
    """ray.init() without an address joins the cluster a `ray start` (or ray.cluster_utils)
    recorded on this machine; a run without --address / RAY_ADDRESS starts its own instead."""
    code = ("import ray\nfrom arinv.config import ScalingConfig\n"
            "from pipelines.trainer import init_ray\n"
            "init_ray(None, ScalingConfig(num_workers=1, cpus_per_worker=1))\n"
            "print(ray.get_runtime_context().gcs_address)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] != two_nodes.address
