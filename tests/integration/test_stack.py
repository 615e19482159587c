"""infra/local/stack.sh end to end, as a platform engineer rehearses a cluster: bring the stack
up (token-auth Ray head, MLflow with basic auth on a real PostgreSQL, S3 server), submit the toy
encoder training with the real ``ray job submit`` CLI, find the run, its metrics and the
registered model on the MLflow server; refusals without the Ray token or MLflow credentials; no
secret of the stack in any output; ``down`` leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "infra" / "local" / "stack.sh"
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    """Distinct free ports (each socket held until all are picked, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _sh(args, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{args[:4]} exited {out.returncode}:\n{out.stdout[-3000:]}\n"
                             f"{out.stderr[-3000:]}")
    return out


def _http(url, auth=None) -> int:
    req = urllib.request.Request(url)
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def stack():
    """The stack, up on free ports in a state folder the postgres user can reach (pytest's
    tmp folders are closed to other users); stopped and deleted at the end, its processes
    (recorded with every descendant before ``down``) checked gone."""
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("runuser missing")
    state = Path(tempfile.mkdtemp(prefix="arinv-stack-", dir="/tmp"))
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "AWS_", "RAY_", "ARINV_"))}
    base.update(ARINV_STACK_DIR=str(state), ARINV_STACK_PYTHON=sys.executable,
                HOME=str(state / "home"),  # no ~/.ray token found
                **{f"ARINV_STACK_{n}_PORT": str(p) for n, p in zip(
                    ("S3", "POSTGRES", "MLFLOW", "RAY", "DASHBOARD"), _free_ports(5))})
    (state / "home").mkdir()
    up = _sh(["bash", str(STACK), "up"], base, timeout=300, check=False)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        client = dict(base)
        for line in (state / "stack.env").read_text().splitlines():
            k, v = line.removeprefix("export ").split("=", 1)
            client[k] = json.loads(v)
        yield {"state": state, "base": base, "env": client, "up": up.stdout + up.stderr,
               "secrets": json.loads((state / "secrets.json").read_text())
               | {"ray_token": (state / "ray_token").read_text().strip()}}
    finally:
        import psutil

        procs = []
        recorded = state / "stack.json"
        for rec in (json.loads(recorded.read_text()) if recorded.exists() else {}).values():
            try:
                p = psutil.Process(rec["pid"])
                procs += [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        down = _sh(["bash", str(STACK), "down", "--purge"], base, timeout=120, check=False)
        left = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in left:  # never leave them behind, even when the check below fails
            p.kill()
        assert down.returncode == 0, down.stdout + down.stderr
        assert not left, [p.cmdline()[:3] for p in left]
        assert not state.exists()


def test_stack_up_refuses_without_credentials_and_runs_a_submitted_job(stack, monkeypatch):
    env, sec, state = stack["env"], stack["secrets"], stack["state"]
    st = _sh(["bash", str(STACK), "status"], stack["base"])
    assert st.stdout.count("up (pid") == 4, st.stdout

    # the toy encoder training, submitted with the real CLI and the project as working dir;
    # the job needs no credential of its own (the head's environment has them)
    submit = [RAY, "job", "submit", "--working-dir", str(ROOT), "--runtime-env-json",
              json.dumps({"excludes": [".venv", ".git", "runs", ".stack", "*.beton"]}), "--",
              "python", "-m", "pipelines.train_encoder", "--config", "tiny-sample-standard",
              *[a for kv in ("data.train_per_class=4", "data.val_per_class=2",
                             "optim.batch_size=8", "optim.epochs=1", "eval.every=1",
                             "eval.pgd_steps=1", "eval.images=8", "eval.epoch_images=8",
                             "eval.pgd_eps=[0.5]", "scaling.cpus_per_worker=1")
                for a in ("--set", kv)],
              "--storage-path", env["ARINV_STORAGE"], "--experiment", "stack-e2e",
              "--alias", "e2e", "--no-progress"]
    # Ray: the same submission is refused without the token, and with a wrong one
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    out = _sh(submit, no_token, timeout=60, check=False)
    assert out.returncode != 0 and "Missing authentication token" in out.stdout + out.stderr
    (state / "home" / "wrong").write_text("0" * 64)
    out = _sh(submit, env | {"RAY_AUTH_TOKEN_PATH": str(state / "home/wrong")}, timeout=60,
              check=False)
    assert out.returncode != 0 and "invalid or incorrect" in out.stdout + out.stderr
    # MLflow: 401 without credentials or with a wrong password; the pipelines say what to set
    api = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    user = env["MLFLOW_TRACKING_USERNAME"]
    assert _http(api) == 401
    assert _http(api, (user, "not-the-password")) == 401
    assert _http(api, (user, env["MLFLOW_TRACKING_PASSWORD"])) == 200
    from pipelines.errors import TrackingRefused
    from pipelines.tracking import check_access

    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(TrackingRefused, match="Set MLFLOW_TRACKING_USERNAME"):
        check_access(env["MLFLOW_TRACKING_URI"])

    job = _sh(submit, env, timeout=420)
    assert "succeeded" in job.stdout + job.stderr

    import mlflow

    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(k, env[k])
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("stack-e2e")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
    mv = client.get_model_version_by_alias("arinv-alexnet_small", "e2e")
    assert mv.status == "READY" and mv.run_id == run.info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model("models:/arinv-alexnet_small@e2e")  # through the server
    logits = model.predict(np.zeros((2, 3, 128, 128), np.float32))["logits"]
    assert np.asarray(logits).shape == (2, 8)
    # checkpoints and MLflow artifacts are in the S3 server's bucket
    import boto3

    s3 = boto3.session.Session().client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="arinv-stack") for o in page.get("Contents", [])]
    assert any(k.startswith("runs/tiny-sample-standard/") and k.endswith("state.pt")
               for k in keys), keys[:10]
    assert any(k.startswith("mlflow-artifacts/") for k in keys)

    # no secret of the stack in anything it wrote or printed: the up / job output, the job's
    # logs, every log file of Ray, MLflow and S3, every stored object, MLflow params and tags
    secrets = {k: v.encode() for k, v in sec.items()}
    leaks = []

    def scan(where, body: bytes):
        for name, v in secrets.items():
            if (i := body.find(v)) >= 0:
                leaks.append(f"{name} in {where}: {body[max(0, i - 120):i + len(v) + 40]!r}")

    scan("stack.sh up output", stack["up"].encode())
    scan("ray job submit output", (job.stdout + job.stderr).encode())
    job_id = next(w.strip("'") for w in (job.stdout + job.stderr).split()
                  if w.strip("'").startswith("raysubmit_"))
    scan("ray job logs", _sh([RAY, "job", "logs", job_id], env, timeout=60).stdout.encode())
    private = {"secrets.json", "ray_token", "stack.env", "pgpass"}
    for f in state.rglob("*"):
        if f.is_file() and f.name not in private and f.relative_to(state).parts[0] != "postgres":
            body = f.read_bytes()
            if f.name == "s3.log":  # the S3 server's request log records presigned URLs, whose
                # X-Amz-Credential names the access key ID by protocol (AWS's own access logs
                # do too); the ID is not the secret: any other occurrence still counts
                body = body.replace(b"X-Amz-Credential=" + secrets["s3_access_key"], b"")
            scan(f, body)
    for k in keys:
        if not k.endswith("/"):
            scan(f"s3://arinv-stack/{k}", s3.get_object(Bucket="arinv-stack", Key=k)["Body"].read())
    scan("MLflow params / tags", repr((run.data.params, run.data.tags, mv.tags)).encode())
    assert not leaks, leaks
