"""Integration fixtures: a real S3-protocol server (moto) on loopback, shared by the session.

``s3_server`` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 with a free port and
creates one bucket; it does not touch the environment, so a test chooses how to reach it:

* ``s3_env`` (function scope) points the standard AWS settings at it with ``monkeypatch``
  (``AWS_ENDPOINT_URL``, fake keys, a region, no profile or credentials files, no instance
  metadata lookups, no proxy for loopback) and returns the server;
* ``s3_server.client()`` is a boto3 client with explicit endpoint/keys, for setting up or
  tampering with objects behind the library's back;
* ``s3_server.env`` is the same settings as a dict (also ``MLFLOW_S3_ENDPOINT_URL``), for
  subprocesses, Ray ``runtime_env={"env_vars": ...}`` or an MLflow server;
* ``s3_prefix`` is a fresh ``s3://bucket/<test>-<uuid>/`` so tests never see each other's
  objects.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field

import pytest
from aws_settings import _AWS_VARS_TO_CLEAR, point_aws_at


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = "arinv-test-key"
    secret_key: str = "arinv-test-secret"
    env: dict = field(default_factory=dict)

    def client(self, **config_kwargs):
        """A boto3 S3 client talking to this server with explicit settings (env-independent)."""
        import boto3
        import botocore.config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(**config_kwargs))

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # no per-request log lines
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s = S3Server(endpoint_url=f"http://{host}:{port}", bucket="arinv-test")
        s.env = {
            "AWS_ENDPOINT_URL": s.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": s.endpoint_url,
            "AWS_ACCESS_KEY_ID": s.access_key,
            "AWS_SECRET_ACCESS_KEY": s.secret_key,
            "AWS_DEFAULT_REGION": s.region,
            "AWS_REGION": s.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        s.client().create_bucket(Bucket=s.bucket)
        yield s
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path_factory):
    """Point the standard AWS settings at the test server for this test only."""
    point_aws_at(s3_server, monkeypatch, tmp_path_factory)
    return s3_server


@pytest.fixture
def s3_prefix(s3_server, request) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40]
    return s3_server.uri(f"{name}-{uuid.uuid4().hex[:8]}/")


# ------------------------------------------------------------------------------ MLflow server

# (appended section: its imports stay with it)
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


@dataclass
class MlflowServer:
    """A real ``mlflow server`` subprocess: sqlite backend, artifacts proxied to the S3 server.
    ``stop()`` / ``start()`` restart it on the same port and database (for outage tests)."""

    port: int
    workdir: Path
    env: dict
    bucket: str
    artifacts_prefix: str = "mlflow-artifacts"
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self):
        return self.workdir / "server.log"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [str(exe)] if exe.exists() else [shutil.which("mlflow") or "mlflow"]
        return cmd + ["server", "--host", "127.0.0.1", "--port", str(self.port),
                      "--workers", "1",
                      "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
                      "--artifacts-destination", f"s3://{self.bucket}/{self.artifacts_prefix}"]

    def start(self, timeout: float = 90.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(self.command(), env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; log:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} not healthy after {timeout:.0f} s; "
                           f"log:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's process group (uvicorn runs in a child process)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children that outlived the leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A session-wide ``mlflow server`` (one uvicorn worker, no job runner) on a free loopback
    port; ``.uri`` is its tracking URI, artifacts land in ``s3://<bucket>/mlflow-artifacts``."""
    if not (Path(sys.executable).with_name("mlflow").exists() or shutil.which("mlflow")):
        pytest.skip("the mlflow command is not installed")
    workdir = tmp_path_factory.mktemp("mlflow-server")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AWS_")) and k not in _AWS_VARS_TO_CLEAR}
    env.update(s3_server.env)
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job runner (4 worker processes)
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               NO_PROXY="127.0.0.1,localhost", AWS_CONFIG_FILE=str(workdir / "aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(workdir / "aws-credentials"))
    server = MlflowServer(port=_free_port(), workdir=workdir, env=env, bucket=s3_server.bucket)
    server.start()
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture(scope="module")
def ray_cluster():
    """A local 4-CPU Ray cluster for one test module (modules needing another shape define
    their own fixture of this name)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
