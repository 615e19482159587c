"""The training pipelines on a real local Ray cluster with a real MLflow store: 2-worker runs of
each pipeline at toy size, a killed worker then a killed driver, relaunches that resume."""

from __future__ import annotations

import json
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

from arinv.config import ConfigError, EncoderTrainConfig, GeneratorTrainConfig, load_config  # noqa: E402
from arinv.data.reader import write_sample_shards
from pipelines.trainer import Launch  # noqa: E402

# 8 classes x 8 train crops = 64 images (odd splits across workers are fine), 8 x 4 held out.
TOY = ["data.train_per_class=8", "data.val_per_class=4", "optim.batch_size=8",
       "eval.pgd_steps=2", "eval.images=16", "eval.epoch_images=8",
       "eval.pgd_eps=[0.5]", "eval.every=1", "scaling.cpus_per_worker=1"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return str(write_sample_shards(tmp_path_factory.mktemp("data") / "sample", 8, 4,
                                   progress=False))


def encoder_cfg(shards, *extra, preset="tiny-sample-robust"):
    return load_config(EncoderTrainConfig, preset,
                       [*TOY, f"data.shards={shards}", "attack.steps=2", *extra]
                       if preset.endswith("robust") else [*TOY, f"data.shards={shards}", *extra])


def run_ids(tracking_uri, experiment="arinv"):
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [r.info.run_id for r in client.search_runs([exp.experiment_id])]


def metric_steps(tracking_uri, run_id, key):
    return sorted({m.step for m in mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, key)})


def test_encoder_then_generator_two_workers_registry_and_relaunch(ray_cluster, shards, tmp_path,
                                                                   monkeypatch):
    from pipelines.train_encoder import train_encoder
    from pipelines.train_generator import train_generator

    # no tracking URI anywhere: every command run from this folder shares ./mlflow.db
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    cfg = encoder_cfg(shards, "optim.epochs=2", "scaling.num_workers=2")
    run = Launch(workdir=tmp_path / "enc", progress=False)
    r = train_encoder(cfg, run)
    assert json.loads((tmp_path / "enc" / "metrics.json").read_text())["run_id"] == r["run_id"]
    assert r["registered"] == "models:/arinv-alexnet_small@robust"
    assert r["robustness"]["n"] == 16 and set(r["robustness"]["pgd"]) == {"0.5"}
    client = mlflow.MlflowClient(uri)
    params = client.get_run(r["run_id"]).data.params
    assert params["attack.eps"] == "0.5" and params["scaling.num_workers"] == "2"
    assert metric_steps(uri, r["run_id"], "adv_loss") == [1, 2]
    assert metric_steps(uri, r["run_id"], "val_pgd_acc_eps0.5") == [1, 2]
    final = client.get_run(r["run_id"]).data.metrics  # the report and the logged metrics agree
    assert final["final_clean_acc"] == r["robustness"]["clean"]
    assert final["final_pgd_acc_eps0.5"] == r["robustness"]["pgd"]["0.5"]
    hist = client.get_metric_history(r["run_id"], "images")
    assert {m.value for m in hist} == {64.0}  # every training image once per epoch, 2 workers
    assert int(client.get_model_version_by_alias("arinv-alexnet_small", "robust").version) == r["version"]

    # relaunching the finished run trains nothing and registers nothing new: no new run, no
    # new checkpoint, no new epochs, the same model version
    checkpoints = sorted((tmp_path / "enc" / "ray").glob("*/checkpoint_*"))
    again = train_encoder(cfg, run)
    assert again["run_id"] == r["run_id"] and run_ids(uri) == [r["run_id"]]
    assert again["robustness"] == r["robustness"] and again["version"] == r["version"]
    assert sorted((tmp_path / "enc" / "ray").glob("*/checkpoint_*")) == checkpoints
    assert metric_steps(uri, r["run_id"], "adv_loss") == [1, 2]

    # the generator takes its encoder from the registry; GAN loss on, so D is DDP-wrapped too
    gcfg = load_config(GeneratorTrainConfig, "tiny-sample-generator", [
        "data.train_per_class=8", "data.val_per_class=4", f"data.shards={shards}",
        "optim.batch_size=8", "optim.epochs=2", "eval.images=8", "eval.epoch_images=8", "eval.every=1", "eval.ri_steps=2",
        "scaling.num_workers=2", "scaling.cpus_per_worker=1", "loss.gan=1.0",
        "generator.discriminator=alexnet_small_conv5",
        "encoder.checkpoint=models:/arinv-alexnet_small@robust"])
    g = train_generator(gcfg, Launch(workdir=tmp_path / "gen", progress=False,
                                     model_cache=str(tmp_path / "cache")))
    assert g["tracking_uri"] == r["tracking_uri"] == uri
    assert g["registered"] == "models:/arinv-alexnet_small-conv5-autoencoder@robust"
    q = g["quality"]
    assert q["n"] == 8 and q["psnr"] > 0 and 0 < q["ssim"] <= 1 and "ri_baseline" in q
    assert metric_steps(uri, g["run_id"], "loss_d") == [1, 2]
    arts = {a.path for a in client.list_artifacts(g["run_id"], "grids")}
    assert arts == {"grids/epoch_0001", "grids/epoch_0002"}

    # the same config through the one loop in this process: same checkpoint and history shape
    from arinv.train.local import fit_local

    local = fit_local(gcfg, tmp_path / "gen-local", progress=False,
                      encoder_checkpoint=r["checkpoint"])
    states = [torch.load(c, weights_only=True) for c in (g["checkpoint"], local["checkpoint"])]
    assert set(states[0]["state"]) == set(states[1]["state"]) == {
        "generator", "opt_g", "sched_g", "discriminator", "opt_d", "sched_d"}
    assert [set(h) for h in states[0]["progress"]["history"]] == \
        [set(h) for h in states[1]["progress"]["history"]]
    assert set(local["quality"]) == set(q) and (tmp_path / "gen-local" / "grids" / "epoch_0002").is_dir()
    # the README's consumer example, as written, finds the model from this folder
    import re

    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```$", readme, re.S | re.M)
                if "mlflow.pyfunc.load_model" in b]
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["out"]["reconstruction"].shape == (4, 3, 128, 128)
    assert ns["out"]["features"].shape == (4, 64, 3, 3)


ENCODER_HISTORY = {"epoch", "loss", "acc", "lr", "images", "images_per_s", "data_wait_share",
                   "corrupt_samples"}
EVALUATED = {"val_clean_acc", "val_pgd_acc_eps0.5"}
FINAL = {"final_clean_acc", "final_pgd_acc_eps0.5"}


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_one_loop_behaves_the_same_under_both_backends(backend, ray_cluster, shards, tmp_path):
    """The same tiny config through the one loop locally and on Ray Train: same checkpoint
    contents and history fields, the evaluation cadence honoured; runtime.deterministic (ordered,
    seeded stream; deterministic kernels): two fresh runs end with the same weights and metrics
    (all but the timings); a relaunch with more epochs resumes at the right epoch, and a
    relaunch with another architecture is refused."""
    from arinv.checkpoint import CheckpointError
    from arinv.train.local import fit_local
    from pipelines.train_encoder import train_encoder

    def fit(*extra, workdir="w"):
        cfg = encoder_cfg(shards, "eval.every=3", "runtime.deterministic=true", *extra,
                          preset="tiny-sample-standard")
        if backend == "local":
            return fit_local(cfg, tmp_path / workdir, progress=False)
        return train_encoder(cfg, Launch(workdir=tmp_path / workdir, register=False,
                                         progress=False,
                                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))

    first = torch.load(fit("optim.epochs=2")["checkpoint"], weights_only=True)
    twin = torch.load(fit("optim.epochs=2", workdir="twin")["checkpoint"], weights_only=True)
    timing = {"images_per_s", "data_wait_share"}
    a, b = ([{k: v for k, v in h.items() if k not in timing} for h in s["progress"]["history"]]
            for s in (first, twin))
    assert a == b and len(a) == 2 and "val_pgd_acc_eps0.5" in a[-1]
    for k, w in first["state"]["model"].items():
        assert torch.equal(w, twin["state"]["model"][k]), k

    r = fit("optim.epochs=3")
    state = torch.load(r["checkpoint"], weights_only=True)
    assert set(state["state"]) == {"model", "optimizer", "scheduler"}
    hist = state["progress"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[:2] == first["progress"]["history"]
    assert set(hist[0]) == ENCODER_HISTORY  # epoch 1: no check (every 3 epochs, and the last)
    assert set(hist[1]) == set(hist[2]) == ENCODER_HISTORY | EVALUATED | FINAL
    assert all(h["images"] == 64 for h in hist) and set(r["robustness"]["pgd"]) == {"0.5"}
    with pytest.raises(CheckpointError, match="different architecture"):
        fit("optim.epochs=4", "encoder.name=resnet18_cifar_small", "encoder.resolution=32")


def test_a_cluster_without_cpus_for_the_data_stream_warns(ray_cluster):
    """A connected cluster (6 CPUs here) whose CPUs the training workers would all take: the
    data stream's read tasks would wait for ever, so the start warns, naming the fields."""
    from types import SimpleNamespace

    from pipelines.trainer import warn_if_short_of_cpus

    with pytest.warns(RuntimeWarning, match=r"scaling.cpus_per_worker=3 take 6"):
        warn_if_short_of_cpus("ray://head", SimpleNamespace(num_workers=2, cpus_per_worker=3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_short_of_cpus("ray://head", SimpleNamespace(num_workers=2, cpus_per_worker=2))


def test_config_errors_before_ray_work(shards, tmp_path):
    from pipelines.train_generator import train_generator

    with pytest.raises(ConfigError, match="not a multiple"):
        load_config(EncoderTrainConfig, "tiny-sample-robust",
                    ["optim.batch_size=10", "scaling.num_workers=3"])
    gcfg = load_config(GeneratorTrainConfig, "tiny-sample-generator", [f"data.shards={shards}"])
    with pytest.raises(ConfigError, match="encoder.checkpoint"):
        train_generator(gcfg, Launch(workdir=tmp_path, progress=False))

    # a class count that does not match the shard set: refused by the driver, no worker starts
    from pipelines.train_encoder import train_encoder

    was_up = ray.is_initialized()
    with pytest.raises(ConfigError, match=r"encoder.num_classes: is 10 but shard set .* has 8"):
        train_encoder(encoder_cfg(shards, "encoder.num_classes=10"),
                      Launch(workdir=tmp_path / "w", progress=False,
                             tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert ray.is_initialized() == was_up and not (tmp_path / "w" / "ray").exists()


def _train_workers() -> list:
    from own_processes import own_processes

    return own_processes("RayTrainWorker")  # workers of the cluster this module started


def _wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _worker_tracebacks(limit: int = 6000) -> str:
    """The tracebacks Ray's worker processes logged (Ray Train truncates its error snippets)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = []
    for f in sorted(logs.glob("worker-*.err"), key=lambda f: f.stat().st_mtime):
        text = f.read_text(errors="replace")
        if "Traceback" in text:
            found.append(f"--- {f.name}\n{text[text.index('Traceback'):][-2000:]}")
    return "\n".join(found)[-limit:]


def _checkpoints(storage: Path, name: str) -> list[Path]:
    """The run's checkpoint folders whose state.pt reads back whole (Ray creates a folder
    before it has finished persisting into it)."""
    def whole(folder: Path) -> bool:
        try:
            torch.load(folder / "state.pt", weights_only=True)
            return True
        except Exception:
            return False

    found = sorted((storage / name).glob("checkpoint_*")) if (storage / name).is_dir() else []
    return [f for f in found if whole(f)]


def test_a_killed_worker_and_a_killed_driver_each_resume(ray_cluster, shards, tmp_path):
    """3 epochs on 2 workers: a worker SIGKILLed after the first checkpoint (Ray Train restarts
    the group from it), the driver SIGKILLed after the second, the same command relaunched:
    each epoch trained exactly once, over every image, into the one MLflow run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray"
    cmd = [sys.executable, "-m", "pipelines.train_encoder", "--config", "tiny-sample-standard",
           *[a for o in [*TOY, f"data.shards={shards}", "optim.epochs=3", "eval.every=0",
                         "scaling.num_workers=2"] for a in ("--set", o)],
           "--workdir", str(tmp_path / "w"), "--storage-path", str(storage),
           "--tracking-uri", uri, "--no-register", "--no-progress", "--address", ray_cluster]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _checkpoints(storage, "tiny-sample-standard"), 240,
                  "the first driver's first checkpoint")
        victim = _wait_for(_train_workers, 30, "a train worker process")[0]
        os.kill(victim.pid, signal.SIGKILL)
        _wait_for(lambda: len(_checkpoints(storage, "tiny-sample-standard")) >= 2, 300,
                  f"a checkpoint after the killed worker\n{_worker_tracebacks()}")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        first.kill()
        first.wait()
    _wait_for(lambda: not _train_workers(), 60, "the dead driver's workers to exit")
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "tiny-sample-standard: resuming after epoch 2/3 from" in second.stdout
    state = torch.load(tmp_path / "w" / "final" / "state.pt", weights_only=True)
    history = state["progress"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]  # each planned epoch exactly once
    assert all(h["images"] == 64 for h in history)
    (run_id,) = run_ids(uri)  # the restarted group and the relaunch kept the one run
    # every epoch's metrics logged once, though the kills may have cut their delivery short
    steps = [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")]
    assert sorted(steps) == [1, 2, 3]


def test_ffcv_loader_feeds_two_workers_every_image_once(ray_cluster, shards, tmp_path):
    from pipelines.train_encoder import train_encoder

    cfg = encoder_cfg(shards, "optim.epochs=2", "scaling.num_workers=2", "eval.every=0",
                      "data.loader=ffcv", preset="tiny-sample-standard")
    r = train_encoder(cfg, Launch(workdir=tmp_path, register=False, progress=False,
                                  tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    import torch

    hist = torch.load(r["checkpoint"], weights_only=True)["progress"]["history"]
    assert [h["images"] for h in hist] == [64, 64] and r["robustness"]["n"] == 16
