"""pipelines.tracking against a real ``mlflow server`` (sqlite backend, artifacts proxied to a
moto S3 server), both started by the fixtures in conftest.py; no mocks.

MLflow's own HTTP retries are made short here (it retries for minutes by default), so the
outage and unreachable-server tests stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("boto3")

import torch
from mlflow.tracking import MlflowClient

from arinv.config import EncoderTrainConfig, GeneratorTrainConfig, load_config, to_dict
from arinv.models import create_encoder, create_generator
from arinv.models.load import load_generator
from arinv.models.load import load_encoder
from arinv.checkpoint import save_checkpoint
from pipelines.registry import fetch_checkpoint, register_autoencoder, register_encoder
from pipelines.tracking import (
    RUN_KEY_TAG,
    RunLogger,
    TrackingUnreachable,
    default_tracking_uri,
    find_or_create_run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _short_mlflow_http(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An untrained tiny encoder and generator saved as arinv checkpoints (no training)."""
    d = tmp_path_factory.mktemp("ckpt")
    ecfg = load_config(EncoderTrainConfig, "tiny-sample-robust")
    enc = create_encoder("alexnet_small", num_classes=8)
    p_enc = save_checkpoint(d / "encoder.pt", kind="encoder", arch=enc.arch,
                            modules={"model": enc}, progress={"epoch": 1}, config=to_dict(ecfg))
    gcfg = load_config(GeneratorTrainConfig, "tiny-sample-generator")
    g = create_generator("alexnet_small_conv5")
    p_gen = save_checkpoint(d / "generator.pt", kind="generator",
                            arch={"generator": g.arch, "discriminator": None, "encoder": enc.arch},
                            modules={"generator": g}, progress={"epoch": 1}, config=to_dict(gcfg))
    return {"encoder": p_enc, "generator": p_gen, "enc": enc, "gen": g}


def _run(server, name: str = "run") -> str:
    return find_or_create_run(server.uri, f"test-{_uid()}", f"key-{_uid()}", run_name=name)


# ------------------------------------------------------------------------------------ runs

def test_default_tracking_uri(tmp_path, monkeypatch):
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri(tmp_path) == "http://tracking:5000"


def test_find_or_create_run_is_idempotent(mlflow_server):
    client, exp = MlflowClient(mlflow_server.uri), f"test-runs-{_uid()}"
    a = find_or_create_run(mlflow_server.uri, exp, "attempt-key", run_name="first",
                           tags={"arinv.config": "tiny"})
    again = find_or_create_run(mlflow_server.uri, exp, "attempt-key", run_name="renamed")
    other = find_or_create_run(mlflow_server.uri, exp, "other-key", run_name="second")
    assert again == a and other != a
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([a, other])
    run = client.get_run(a)
    assert run.info.run_name == "first"
    assert run.data.tags[RUN_KEY_TAG] == "attempt-key" and run.data.tags["arinv.config"] == "tiny"

    client.set_terminated(a, "FAILED")  # a retried attempt resumes its failed run
    assert find_or_create_run(mlflow_server.uri, exp, "attempt-key", run_name="x") == a
    assert client.get_run(a).info.status == "RUNNING"
    with pytest.raises(ValueError, match="run_key"):
        find_or_create_run(mlflow_server.uri, exp, "it's", run_name="x")
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TrackingUnreachable, match=f"{dead} unreachable"):
        find_or_create_run(dead, exp, "attempt-key", run_name="x")


# ------------------------------------------------------------------------------- RunLogger

def _png(path, color) -> bytes:
    from PIL import Image

    Image.new("RGB", (8, 8), color).save(path)
    return path.read_bytes()


def test_run_logger_delivers_params_metrics_tags_artifacts(mlflow_server, s3_server, tmp_path,
                                                          caplog):
    run_id = _run(mlflow_server)
    image = tmp_path / "grid.png"
    original = _png(image, (255, 0, 0))
    log = RunLogger(mlflow_server.uri, run_id, retry_interval=0.2)
    log.log_params({"optim.lr": 0.1, "name": "tiny", "long": "x" * 7000})
    log.log_params({"optim.lr": 0.1})            # the same value again: fine
    log.log_params({"optim.lr": 0.2})            # params are write-once: a warning, no error
    for step in range(3):
        log.log_metrics({"loss": 1.0 / (step + 1), "acc": torch.tensor(0.5 * step),
                         "nan": float("nan"), "label": "x"}, step=step)
    log.log_artifact(image, "images")
    _png(image, (0, 0, 255))                     # overwritten before the upload: copy was taken
    log.set_tags({"phase": "train"})
    assert log.close("FINISHED") is True
    assert log.pending == 0

    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.1" and run.data.params["name"] == "tiny"
    assert run.data.params["long"] == "x" * 6000
    assert "optim.lr" in caplog.text and "write-once" in caplog.text
    history = MlflowClient(mlflow_server.uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert run.data.metrics["acc"] == 1.0
    assert "nan" not in run.data.metrics and "label" not in run.data.metrics
    assert run.data.tags["phase"] == "train"

    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_server.bucket,
                                                 Prefix="mlflow-artifacts/")["Contents"]]
    key = next(k for k in keys if k.endswith(f"{run_id}/artifacts/images/grid.png"))
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == original
    with pytest.raises(RuntimeError, match="closed"):
        log.log_metrics({"loss": 0.0}, step=4)


def test_run_logger_drops_only_what_the_server_refuses(mlflow_server, caplog):
    run_id = _run(mlflow_server)
    log = RunLogger(mlflow_server.uri, run_id, retry_interval=0.2)
    with log._cond:   # hold the delivery thread back, so the three go out as one merged request
        log.log_metrics({"ok": 1.0}, step=0)
        log.log_metrics({"bad?name": 2.0}, step=0)   # an invalid name: refused, not retried
        log.log_metrics({"ok": 2.0}, step=1)
    assert log.flush(timeout=30) is False
    assert log.pending == 0 and log.rejected == 1
    assert "refused" in caplog.text
    history = MlflowClient(mlflow_server.uri).get_metric_history(run_id, "ok")
    assert [m.value for m in history] == [1.0, 2.0]
    log.close()


def test_run_logger_outage_does_not_block_and_delivers_later(mlflow_server, tmp_path, caplog):
    run_id = _run(mlflow_server)
    image = tmp_path / "sample.png"
    original = _png(image, (0, 255, 0))
    mlflow_server.stop()
    try:
        log = RunLogger(mlflow_server.uri, run_id, retry_interval=0.3)
        slowest = 0.0
        for step in range(20):
            t0 = time.monotonic()
            if step == 0:
                log.log_params({"optim.lr": 0.1})
                log.log_artifact(image, "samples")
                log.set_tags({"phase": "outage"})
            log.log_metrics({"loss": float(step)}, step=step)
            slowest = max(slowest, time.monotonic() - t0)
        image.unlink()                            # the logger holds its own copy
        assert slowest < 1.0
        deadline = time.monotonic() + 20
        while "unreachable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "unreachable" in caplog.text and "pending" in caplog.text
        assert log.pending > 0
        assert log.flush(timeout=0.5) is False
    finally:
        mlflow_server.start()
    assert log.flush(timeout=60) is True
    assert log.close("FINISHED") is True
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [float(s) for s in
                                                                              range(20)]
    assert run.data.params["optim.lr"] == "0.1" and run.data.tags["phase"] == "outage"
    assert run.info.status == "FINISHED"
    local = client.download_artifacts(run_id, "samples/sample.png", str(tmp_path))
    assert Path(local).read_bytes() == original


def test_close_gives_up_after_its_timeout(caplog):
    log = RunLogger(f"http://127.0.0.1:{_free_port()}", "0" * 32, retry_interval=0.2)
    log.log_metrics({"loss": 1.0}, step=0)
    log.log_params({"a": 1})
    t0 = time.monotonic()
    assert log.close("FAILED", timeout=1.0) is False
    assert time.monotonic() - t0 < 10
    assert "3 item(s)" in caplog.text and "not delivered" in caplog.text


# -------------------------------------------------------------------------------- registry

@pytest.fixture(scope="module")
def registered(mlflow_server, checkpoints):
    uid = _uid()
    run_id = find_or_create_run(mlflow_server.uri, f"test-registry-{uid}", "registry",
                                run_name="registry")
    enc = register_encoder(mlflow_server.uri, run_id, checkpoints["encoder"],
                           name=f"arinv-enc-{uid}", alias="robust")
    ae = register_autoencoder(mlflow_server.uri, run_id,
                              encoder_checkpoint=checkpoints["encoder"],
                              generator_checkpoint=checkpoints["generator"],
                              name=f"arinv-ae-{uid}", alias="best")
    return {"run_id": run_id, "encoder": enc, "autoencoder": ae}


def test_registered_versions_are_ready_and_aliased(mlflow_server, registered, monkeypatch):
    client = MlflowClient(mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # for get_model_info
    for key, alias, kind in (("encoder", "robust", "encoder"), ("autoencoder", "best",
                                                                "autoencoder")):
        mv = registered[key]
        assert mv.status == "READY" and alias in mv.aliases
        assert mv.tags["arinv.kind"] == kind and mv.tags["arinv.arch"] == "alexnet_small"
        assert client.get_model_version_by_alias(mv.name, alias).version == mv.version
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{registered['encoder'].name}@robust")
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 128, 128)
    assert [(o.name, o.shape) for o in info.signature.outputs.inputs] == [("logits", (-1, 8))]


_CONSUMER = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoPipelines(importlib.abc.MetaPathFinder):  # consumers do not have pipelines/
        def find_spec(self, name, path=None, target=None):
            if name == "pipelines" or name.startswith("pipelines."):
                raise ImportError(f"{name} is not available to model consumers")

    sys.meta_path.insert(0, NoPipelines())
    import mlflow, numpy as np

    x = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    out = {}
    for uri in sys.argv[1:]:
        pred = mlflow.pyfunc.load_model(uri).predict(x)
        out[uri] = {k: [list(v.shape), str(v.dtype), float(v.min()), float(v.max())]
                    for k, v in pred.items()}
    out["arinv_file"] = sys.modules["arinv"].__file__
    print("RESULT " + json.dumps(out))
""")


def test_models_load_in_a_fresh_process_by_alias(mlflow_server, registered, checkpoints,
                                                 tmp_path):
    enc_uri = f"models:/{registered['encoder'].name}@robust"
    ae_uri = f"models:/{registered['autoencoder'].name}@best"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "PYTHON"))}   # artifacts come via the server
    env.update(MLFLOW_TRACKING_URI=mlflow_server.uri, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.run([sys.executable, "-c", _CONSUMER, enc_uri, ae_uri], check=False,
                          cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out[enc_uri]["logits"][:2] == [[2, 8], "float32"]
    rec_shape, rec_dtype, lo, hi = out[ae_uri]["reconstruction"]
    assert (rec_shape, rec_dtype) == ([2, 3, 128, 128], "float32") and 0 <= lo <= hi <= 1
    feat = list(checkpoints["enc"].feature_shape("conv5", 128))
    assert out[ae_uri]["features"][:2] == [[2, *feat], "float32"]
    assert "/code/arinv/" in out["arinv_file"]   # the arinv bundled with the model was used


def test_fetch_checkpoint_returns_the_registered_weights(mlflow_server, registered, checkpoints,
                                                         tmp_path, monkeypatch):
    name = registered["encoder"].name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    path = fetch_checkpoint(f"models:/{name}@robust", cache_dir=tmp_path)   # URI from the env
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server.uri            # and left there
    model, cfg = load_encoder(path)
    expected = checkpoints["enc"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert cfg.name == "tiny-sample-robust"
    stamp = path.stat().st_mtime_ns
    by_version = fetch_checkpoint(f"models:/{name}/{registered['encoder'].version}",
                                  mlflow_server.uri, cache_dir=tmp_path)
    assert by_version == path and path.stat().st_mtime_ns == stamp   # served from the cache
    latest = fetch_checkpoint(f"models:/{name}/latest", mlflow_server.uri, cache_dir=tmp_path)
    assert latest == path
    by_run = fetch_checkpoint(f"runs:/{registered['run_id']}/encoder", mlflow_server.uri,
                              cache_dir=tmp_path)
    assert by_run.read_bytes() == path.read_bytes()

    ae = f"models:/{registered['autoencoder'].name}@best"
    enc_of_ae = fetch_checkpoint(ae, mlflow_server.uri, cache_dir=tmp_path)
    assert enc_of_ae.read_bytes() == path.read_bytes()   # an autoencoder yields its encoder
    g, _ = load_generator(fetch_checkpoint(ae, mlflow_server.uri, part="generator",
                                              cache_dir=tmp_path))
    expected = checkpoints["gen"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in g.state_dict().items())
    with pytest.raises(ValueError, match="no generator checkpoint"):
        fetch_checkpoint(f"models:/{name}@robust", mlflow_server.uri, part="generator",
                         cache_dir=tmp_path)


def test_registry_on_a_local_sqlite_store(checkpoints, tmp_path, monkeypatch):
    """The no-server setup: default_tracking_uri's sqlite file. Artifacts go next to the
    database, and nothing lands in the current directory (MLflow's defaults put ./mlruns and
    ./mlflow.db there)."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = default_tracking_uri(tmp_path / "work")
    (tmp_path / "work").mkdir()
    run_id = find_or_create_run(uri, "local", "local-key", run_name="local")
    mv = register_encoder(uri, run_id, checkpoints["encoder"], name="arinv-local", alias="robust")
    assert mv.status == "READY" and mv.aliases == ["robust"]
    path = fetch_checkpoint("models:/arinv-local@robust", uri, cache_dir=tmp_path / "cache")
    model, _ = load_encoder(path)
    expected = checkpoints["enc"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert list(elsewhere.iterdir()) == []
    assert any((tmp_path / "work" / "mlartifacts").rglob("encoder.pt"))


def test_fetch_checkpoint_errors_name_the_uri(mlflow_server, registered, tmp_path):
    uri, name = mlflow_server.uri, registered["encoder"].name
    with pytest.raises(ValueError, match="no registered model 'arinv-missing'"):
        fetch_checkpoint("models:/arinv-missing@robust", uri, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=f"model '{name}' has no alias 'nope'.*robust"):
        fetch_checkpoint(f"models:/{name}@nope", uri, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="has no version '99'"):
        fetch_checkpoint(f"models:/{name}/99", uri, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not a model URI"):
        fetch_checkpoint("/tmp/encoder.pt", uri, cache_dir=tmp_path)

    client = MlflowClient(uri)                   # a registered model that is not arinv's
    plain = f"plain-{_uid()}"
    client.create_registered_model(plain)
    source = registered["encoder"].source        # models:/m-<id> (its .model_id reads None)
    mv = client.create_model_version(plain, source, model_id=source.removeprefix("models:/"))
    client.set_registered_model_alias(plain, "prod", mv.version)
    with pytest.raises(ValueError, match="not an arinv model"):
        fetch_checkpoint(f"models:/{plain}@prod", uri, cache_dir=tmp_path)

    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable, match="unreachable"):
        fetch_checkpoint(f"models:/{name}@robust", f"http://127.0.0.1:{_free_port()}",
                         cache_dir=tmp_path)
    assert time.monotonic() - t0 < 20
