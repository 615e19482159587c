"""Shards written by Ray tasks on a real local cluster: the same bytes as worker processes write,
S3 shards uploaded by the tasks themselves and published by the driver (manifest last), a failing
task leaving no manifest, and the `python -m pipelines.write_shards` entrypoint."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from arinv.data import shards, storage
from arinv.data.beton import BetonReader, decode
from arinv.data.shards import ShardError, verify_shards, write_shards

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# 384 images in 4 shards, both JPEG and raw samples, so the per-shard RNG seeding matters
SETTINGS = {"samples_per_shard": 100, "max_resolution": 96, "compress_probability": 0.5}


@pytest.fixture(scope="module")
def by_processes(tmp_path_factory):
    """The reference set, written by worker processes before Ray starts."""
    dest = tmp_path_factory.mktemp("processes") / "set"
    manifest = write_shards("sample:val", dest, executor="process", workers=2, progress=False,
                            **SETTINGS)
    return dest, manifest


@pytest.fixture(scope="module")
def ray_cluster(by_processes, s3_server):
    """Its nodes get the S3 settings the way a cluster's nodes do: in their environment."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_server.env.items():
            env.setenv(name, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def records(dest: Path, manifest: dict) -> list:
    out = []
    for shard in manifest["shards"]:
        with BetonReader.from_path(dest / shard["file"]) as reader:
            out += [(decode(*r[:4]), r.label) for r in reader.records(0, len(reader))]
    return out


def test_ray_tasks_write_the_same_set_as_processes(ray_cluster, by_processes, tmp_path,
                                                   monkeypatch):
    ref_dest, ref = by_processes

    def no_processes(*args, **kwargs):
        raise AssertionError("Ray is initialised: the shards should be written by Ray tasks")

    monkeypatch.setattr(shards, "_run_processes", no_processes)
    dest = tmp_path / "ray"
    manifest = write_shards("sample:val", dest, progress=False, **SETTINGS)
    assert manifest == ref  # same counts, classes, and sha256 of every shard
    assert len(manifest["shards"]) == 4 and manifest["num_samples"] == 384
    assert verify_shards(dest) == manifest
    got, want = records(dest, manifest), records(ref_dest, ref)
    assert [label for _, label in got] == [label for _, label in want]
    for (a, _), (b, _) in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json"] + [
        f"shard-{i:05d}.beton" for i in range(4)]


def test_s3_shards_are_uploaded_by_the_tasks_and_published_manifest_last(
        ray_cluster, by_processes, s3_server, s3_env, s3_prefix, tmp_path, monkeypatch):
    _, ref = by_processes
    client = s3_server.client()
    bucket, key = storage.split_s3(s3_prefix)
    driver_uploads, at_publish = [], {}
    upload_file = storage.upload_file

    def watched(path, uri, **kw):  # the driver's uploads; the tasks run in other processes
        driver_uploads.append(uri)
        if uri.endswith("manifest.json"):
            for shard in json.loads(Path(path).read_text())["shards"]:
                body = client.get_object(Bucket=bucket, Key=key + shard["file"])["Body"].read()
                at_publish[shard["file"]] = (len(body), hashlib.sha256(body).hexdigest())
        return upload_file(path, uri, **kw)

    monkeypatch.setattr(storage, "upload_file", watched)
    manifest = write_shards("sample:val", s3_prefix, executor="ray", progress=False, **SETTINGS)
    assert manifest == ref
    assert driver_uploads == [s3_prefix + "manifest.json"]
    assert at_publish == {s["file"]: (s["bytes"], s["sha256"]) for s in ref["shards"]}
    keys = sorted(o["Key"][len(key):] for o in client.list_objects_v2(
        Bucket=bucket, Prefix=key)["Contents"])
    assert keys == sorted([s["file"] for s in ref["shards"]] + ["manifest.json"])  # no .tmp-*
    local = tmp_path / "read-back"
    local.mkdir()
    for name in keys:
        client.download_file(bucket, key + name, str(local / name))
    assert verify_shards(local) == manifest


def test_s3_overwrite_is_refused_unless_asked_and_then_drops_stale_shards(
        ray_cluster, s3_env, s3_prefix):
    write_shards("sample:val", s3_prefix, executor="ray", progress=False, **SETTINGS)
    with pytest.raises(ShardError, match=r"duplicate output location: .*manifest\.json.*--overwrite"):
        write_shards("sample:val", s3_prefix, executor="ray", progress=False, **SETTINGS)
    again = write_shards("sample:val", s3_prefix, executor="ray", progress=False, overwrite=True,
                         **{**SETTINGS, "samples_per_shard": 200})
    assert [s["file"] for s in again["shards"]] == ["shard-00000.beton", "shard-00001.beton"]
    assert [u[len(s3_prefix):] for u in storage.list_prefix(s3_prefix)] == [
        "manifest.json", "shard-00000.beton", "shard-00001.beton"]


def test_tasks_that_cannot_reach_the_store_leave_no_manifest_and_say_where(
        ray_cluster, s3_server, s3_env, s3_prefix):
    # the driver reaches the store; the nodes running the tasks do not
    unreachable = {**s3_server.env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                   "AWS_MAX_ATTEMPTS": "1"}
    with pytest.raises(storage.StorageError,
                       match=r"cannot reach .*/\.tmp-\w+/ .*checked from .*writes shard \d"):
        write_shards("sample:val", s3_prefix, executor="ray", progress=False,
                     ray_options={"runtime_env": {"env_vars": unreachable}}, **SETTINGS)
    assert storage.list_prefix(s3_prefix) == []  # no manifest, no shards, temporary keys gone


def test_a_task_on_a_node_without_the_destination_says_so(ray_cluster, tmp_path):
    src = shards.open_source("sample:val")
    task = shards._Task(0, src.refs[:4], src.load, {"max_resolution": 32, "jpeg_quality": 90,
                                                    "compress_probability": 0.5},
                        path=str(tmp_path / "not-on-this-node" / ".shard-00000.beton.tmp"))
    with pytest.raises(ShardError,
                       match=r"not-on-this-node: no such directory on .*same path on every node"):
        shards._run_ray([task], None, False, {})


def test_entrypoint_starts_ray_and_writes_a_valid_set(by_processes, tmp_path):
    _, ref = by_processes
    dest = tmp_path / "job"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.write_shards", "sample:val", str(dest), "--no-progress",
         "--samples-per-shard", "100", "--max-resolution", "96", "--compress-probability", "0.5",
         "--workers", "1"],  # one cold worker imports ffcv, not two competing for 2 cores
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Started a local Ray instance" in out.stderr
    assert f"wrote {ref['num_samples']} samples (8 classes) in 4 shards" in out.stdout
    assert verify_shards(dest) == ref


def test_entrypoint_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "pipelines.write_shards", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0
    for text in ("ray job submit", "--samples-per-shard", "--address", "every node", "s3://"):
        assert text in out.stdout
