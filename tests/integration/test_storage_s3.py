"""arinv.data.storage against a real S3-protocol server (moto) on 127.0.0.1.

No boto3 mocks: every request goes over HTTP to the server. Faults are injected the way they
happen in production: bytes changed in transit (a botocore ``before-send`` hook edits the
request body after the SDK computed its checksum), an object overwritten behind the library's
back, a connection that fails midway, a closed port, missing credentials, a missing bucket.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("boto3")

from arinv.data import storage
from arinv.data.storage import LocalCache, StorageError

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _fresh_clients(monkeypatch):
    """Each test gets new cached clients, so event hooks a test adds die with it."""
    monkeypatch.setattr(storage, "_clients", {})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _rand(n: int, seed: int) -> bytes:
    import random
    return random.Random(seed).randbytes(n)


def _flip_body_byte(request, position: int = 100) -> None:
    """Corrupt one byte of a request body in transit (after the SDK hashed it)."""
    body = request.body
    data = body if isinstance(body, (bytes, bytearray)) else body.read()
    data = bytearray(data)
    data[position] ^= 0xFF
    request.body = bytes(data)


def _s3_keys(client, bucket: str, prefix: str) -> list[str]:
    out = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in out)


# ------------------------------------------------------------------------------------- URIs

def test_uri_helpers():
    assert storage.is_s3("s3://bkt/a/b") and not storage.is_s3("/tmp/x")
    assert not storage.is_s3(Path("s3://x"))
    assert storage.split_s3("s3://bkt/a/b.bin") == ("bkt", "a/b.bin")
    assert storage.split_s3("s3://bkt") == ("bkt", "")
    for bad in ("s3://", "s3:///key", "s3://Upper/key", "s3://a/key", "/tmp/x", "gs://b/k"):
        with pytest.raises(StorageError, match="S3 URI|bucket"):
            storage.split_s3(bad)
    assert storage.local_path("file:///tmp/a%20b") == Path("/tmp/a b")
    with pytest.raises(StorageError, match="remote host"):
        storage.local_path("file://otherhost/tmp/x")
    with pytest.raises(StorageError, match="unsupported"):
        storage.read_bytes("gs://bucket/key")
    with pytest.raises(StorageError, match="not an object"):
        storage.read_bytes("s3://bkt/prefix/")


def test_import_does_not_import_boto3():
    code = "import arinv, arinv.data.storage, sys; print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------- uploads

def test_upload_small_and_multipart_verified(s3_env, s3_prefix, tmp_path):
    raw = s3_env.client()
    small = _rand(10_000, 1)
    big = _rand(12 * MiB + 12345, 2)
    res = storage.upload_file(_write(tmp_path / "small.bin", small), s3_prefix + "small.bin",
                              sha256=_sha(small))
    assert res == {"uri": s3_prefix + "small.bin", "size": len(small), "sha256": _sha(small),
                   "parts": 1, "verified": "checksum"}
    bucket, key = storage.split_s3(s3_prefix + "small.bin")
    head = raw.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == _sha(small)
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(small).digest()).decode()

    res = storage.upload_file(_write(tmp_path / "big.bin", big), s3_prefix + "big.bin",
                              multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    assert res["parts"] == 3 and res["verified"] == "checksum" and res["sha256"] == _sha(big)
    bucket, key = storage.split_s3(s3_prefix + "big.bin")
    head = raw.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")                  # really went up in 3 parts
    assert head["Metadata"]["sha256"] == _sha(big)
    attrs = raw.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["Checksum"])
    assert attrs["Checksum"]["ChecksumType"] == "COMPOSITE"
    parts = [big[i:i + 5 * MiB] for i in range(0, len(big), 5 * MiB)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert attrs["Checksum"]["ChecksumSHA256"].split("-")[0] == base64.b64encode(composite).decode()
    assert hashlib.sha256(storage.read_bytes(s3_prefix + "big.bin")).hexdigest() == _sha(big)

    # verify="read" re-downloads and hashes.
    assert storage.upload_file(tmp_path / "small.bin", s3_prefix + "again.bin",
                               verify="read")["verified"] == "read"


def test_upload_refuses_file_that_differs_from_expected_sha(s3_env, s3_prefix, tmp_path):
    src = _write(tmp_path / "a.bin", b"actual content")
    with pytest.raises(StorageError, match="nothing was uploaded") as e:
        storage.upload_file(src, s3_prefix + "a.bin", sha256=_sha(b"what the manifest says"))
    assert s3_prefix + "a.bin" in str(e.value)
    assert not storage.exists(s3_prefix + "a.bin")


def test_multipart_corrupted_in_transit_is_detected(s3_env, s3_prefix, tmp_path):
    """A part altered after the SDK hashed it: the store's composite checksum no longer
    matches the local one, the upload raises naming the URI and the object is removed."""
    client = storage.s3_client()
    hook = lambda request, **kw: _flip_body_byte(request) if "partNumber=2" in request.url else None
    client.meta.events.register("before-send.s3.UploadPart", hook)
    try:
        src = _write(tmp_path / "big.bin", _rand(11 * MiB, 3))
        uri = s3_prefix + "big.bin"
        with pytest.raises(StorageError, match="did not verify") as e:
            storage.upload_file(src, uri, client=client,
                                multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
        assert uri in str(e.value) and "composite" in str(e.value)
        assert not storage.exists(uri)
    finally:
        client.meta.events.unregister("before-send.s3.UploadPart", hook)


def test_single_put_corrupted_in_transit_caught_by_read_verify(s3_env, s3_prefix, tmp_path):
    """moto stores a single PUT's client-sent checksum without checking it (real S3 answers
    BadDigest), so only verify='read' catches this on moto; on S3 the PUT itself fails."""
    client = storage.s3_client()
    hook = lambda request, **kw: _flip_body_byte(request)
    client.meta.events.register("before-send.s3.PutObject", hook)
    try:
        src = _write(tmp_path / "s.bin", _rand(4096, 4))
        with pytest.raises(StorageError, match="re-read sha256") as e:
            storage.upload_file(src, s3_prefix + "s.bin", client=client, verify="read")
        assert s3_prefix + "s.bin" in str(e.value)
        assert not storage.exists(s3_prefix + "s.bin")
    finally:
        client.meta.events.unregister("before-send.s3.PutObject", hook)


def _shard_dir(root: Path, n: int = 4) -> Path:
    for i in range(n):
        _write(root / f"shard-{i:05d}.bin", _rand(2000 + i, 10 + i))
    _write(root / "sub" / "extra.txt", b"nested")
    (root / "manifest.json").write_text(json.dumps({"shards": n}))
    return root


def test_upload_dir_publishes_manifest_last(s3_env, s3_prefix, tmp_path, monkeypatch):
    client = storage.s3_client()
    bucket, key = storage.split_s3(s3_prefix)
    created: list[str] = []

    def record(params, **kw):
        created.append(params["Key"])

    for op in ("PutObject", "CompleteMultipartUpload"):   # the calls that make an object appear
        client.meta.events.register(f"before-parameter-build.s3.{op}", record)
    src = _shard_dir(tmp_path / "set")
    res = storage.upload_dir(src, s3_prefix, client=client)
    assert created[-1] == key + "manifest.json" and len(created) == 6
    assert list(res)[-1] == "manifest.json"
    assert _s3_keys(s3_env.client(), bucket, key) == sorted(
        key + r for r in ["manifest.json", "sub/extra.txt"] + [f"shard-{i:05d}.bin" for i in range(4)])

    # Re-upload that dies at shard 2 (the connection drops): the old manifest was taken down
    # first and no new one is written, so readers see an incomplete set.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    failing = storage.s3_client()
    from botocore.exceptions import EndpointConnectionError

    def drop(request, **kw):
        if "shard-00002" in request.url:
            raise EndpointConnectionError(endpoint_url=request.url)

    failing.meta.events.register("before-send.s3.PutObject", drop)
    with pytest.raises(StorageError, match="cannot reach") as e:
        storage.upload_dir(src, s3_prefix, client=failing)
    assert s3_prefix + "shard-00002.bin" in str(e.value)
    assert not storage.exists(s3_prefix + "manifest.json")
    # (shard 3 from the first upload is still there: without a manifest it is not a set)
    assert key + "shard-00003.bin" in _s3_keys(s3_env.client(), bucket, key)
    # A fresh prefix with the same failure never gets a manifest at all.
    fresh = s3_prefix.rstrip("/") + "-fresh/"
    with pytest.raises(StorageError):
        storage.upload_dir(src, fresh, client=failing)
    keys = _s3_keys(s3_env.client(), bucket, storage.split_s3(fresh)[1])
    assert keys and not any(k.endswith("manifest.json") for k in keys)
    assert not any("shard-00003" in k for k in keys)          # stopped at the failure


def test_upload_dir_manifest_dict_and_missing_manifest(s3_env, s3_prefix, tmp_path):
    src = tmp_path / "set"
    _write(src / "a.bin", b"a" * 100)
    with pytest.raises(StorageError, match="nothing marks"):
        storage.upload_dir(src, s3_prefix)
    assert storage.list_prefix(s3_prefix) == []                  # nothing uploaded
    res = storage.upload_dir(src, s3_prefix, manifest={"files": {"a.bin": _sha(b"a" * 100)}})
    assert json.loads(storage.read_bytes(s3_prefix + "manifest.json")) == {
        "files": {"a.bin": _sha(b"a" * 100)}}
    assert res["a.bin"]["sha256"] == _sha(b"a" * 100)
    # Local destinations behave the same (atomic copy, verified).
    out = tmp_path / "out"
    storage.upload_dir(src, f"file://{out}", manifest={"n": 1})
    assert sorted(p.name for p in out.iterdir()) == ["a.bin", "manifest.json"]


# ------------------------------------------------------------------------------------- reads

def test_read_range_exists_size_list_uniform(s3_env, s3_prefix, tmp_path):
    data = _rand(100_000, 5)
    local = _write(tmp_path / "d" / "blob.bin", data)
    storage.upload_file(local, s3_prefix + "d/blob.bin")
    for uri in (s3_prefix + "d/blob.bin", str(local), f"file://{local}"):
        assert storage.exists(uri) and storage.size(uri) == len(data)
        assert storage.read_bytes(uri) == data
        for off, n in ((0, 1), (0, 4096), (12345, 678), (len(data) - 10, 10), (500, 0)):
            assert storage.read_range(uri, off, n) == data[off:off + n], (uri, off, n)
        with pytest.raises(StorageError, match="past the end|outside the object"):
            storage.read_range(uri, len(data) - 5, 10)
        with pytest.raises(StorageError, match="past the end|outside the object"):
            storage.read_range(uri, len(data) + 5, 10)
    assert storage.list_prefix(s3_prefix) == [s3_prefix + "d/blob.bin"]
    assert storage.list_prefix(str(tmp_path / "d")) == [str(local)]
    assert not storage.exists(s3_prefix + "d/nope.bin")
    with pytest.raises(StorageError, match="no object at") as e:
        storage.read_range(s3_prefix + "d/nope.bin", 0, 10)
    assert s3_prefix + "d/nope.bin" in str(e.value)


def test_pyarrow_filesystem_uses_same_endpoint(s3_env, s3_prefix, tmp_path):
    pytest.importorskip("pyarrow")
    data = _rand(50_000, 6)
    storage.upload_file(_write(tmp_path / "x.bin", data), s3_prefix + "x.bin")
    fs = storage.pyarrow_s3_filesystem()
    path = s3_prefix[len("s3://"):] + "x.bin"
    with fs.open_input_file(path) as f:
        assert f.read() == data
        assert f.read_at(100, 5000) == data[5000:5100]
    with fs.open_output_stream(s3_prefix[len("s3://"):] + "from-arrow.bin") as f:
        f.write(b"written by pyarrow")
    assert storage.read_bytes(s3_prefix + "from-arrow.bin") == b"written by pyarrow"
    # Ray and Tune pickle the filesystem into their stored state: no key may be in it
    import pickle

    state = pickle.dumps(fs)
    assert s3_env.secret_key.encode() not in state and s3_env.access_key.encode() not in state


# -------------------------------------------------------------------------------- LocalCache

def _count_gets(client) -> list[str]:
    seen: list[str] = []
    client.meta.events.register("before-send.s3",
                                lambda request, **kw: seen.append(f"{request.method} {request.url}"))
    return seen


def test_cache_detects_object_overwritten_behind_its_back(s3_env, s3_prefix, tmp_path):
    good = _rand(30_000, 7)
    uri = s3_prefix + "shard.bin"
    storage.upload_file(_write(tmp_path / "s.bin", good), uri)
    bucket, key = storage.split_s3(uri)
    s3_env.client().put_object(Bucket=bucket, Key=key, Body=_rand(30_000, 8))  # same size
    cache = LocalCache(tmp_path / "cache", max_bytes=10 * MiB)
    with pytest.raises(StorageError, match="checksum mismatch") as e:
        cache.fetch(uri, sha256=_sha(good), size=len(good))
    assert uri in str(e.value) and "re-upload" in str(e.value)
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != ".lock"]
    assert left == []


def test_cache_hit_makes_no_request_and_keeps_file(s3_env, s3_prefix, tmp_path, monkeypatch):
    data = _rand(20_000, 9)
    uri = s3_prefix + "hit.bin"
    storage.upload_file(_write(tmp_path / "h.bin", data), uri)
    client = storage.s3_client()
    requests = _count_gets(client)
    cache = LocalCache(tmp_path / "cache", max_bytes=MiB, client=client)
    p1 = cache.fetch(uri, sha256=_sha(data))
    assert p1.read_bytes() == data and any(r.startswith("GET") for r in requests)
    n, mtime, ino = len(requests), p1.stat().st_mtime_ns, p1.stat().st_ino
    hashed: list[str] = []
    real_sha256_file = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda p: hashed.append(p) or real_sha256_file(p))
    time.sleep(0.01)
    p2 = cache.fetch(uri, sha256=_sha(data), size=len(data))
    assert p2 == p1 and len(requests) == n                          # no request at all
    assert hashed == []                                             # sidecar trusted: no re-hash
    assert (p2.stat().st_mtime_ns, p2.stat().st_ino) == (mtime, ino)   # not rewritten
    # Lost sidecar (e.g. a crash between rename and sidecar write): hashed once, no request.
    cache._sidecar(p1).unlink()
    assert cache.fetch(uri, sha256=_sha(data)) == p1 and len(hashed) == 1 and len(requests) == n
    assert cache.fetch(uri, sha256=_sha(data)) == p1 and len(hashed) == 1
    bucket, key = storage.split_s3(uri)
    s3_env.client().delete_object(Bucket=bucket, Key=key)
    assert cache.fetch(uri, sha256=_sha(data)).read_bytes() == data  # served from disk
    # A different expected checksum is a miss, goes to the store, and names the missing URI.
    with pytest.raises(StorageError, match="no object at") as e:
        cache.fetch(uri, sha256=_sha(b"newer version"))
    assert uri in str(e.value)


def test_cache_evicts_least_recently_used(s3_env, s3_prefix, tmp_path):
    blobs = {name: _rand(1000, i) for i, name in enumerate("abcd")}
    for name, data in blobs.items():
        storage.upload_file(_write(tmp_path / name, data), s3_prefix + name)
    cache = LocalCache(tmp_path / "cache", max_bytes=3000)

    def fetch(name):
        p = cache.fetch(s3_prefix + name, sha256=_sha(blobs[name]))
        time.sleep(0.02)           # distinct last-use times
        return p

    pa, pb, pc = fetch("a"), fetch("b"), fetch("c")
    assert cache.cached_bytes() == 3000
    fetch("a")                      # a is now more recent than b
    pd = fetch("d")                 # over budget: evict b (the least recently used)
    assert pa.exists() and pc.exists() and pd.exists() and not pb.exists()
    assert cache.cached_bytes() <= 3000
    fetch("b")                      # now c is the oldest
    assert not pc.exists() and pa.exists() and pd.exists()
    small = LocalCache(tmp_path / "small", max_bytes=999)
    with pytest.raises(StorageError, match="max_bytes") as e:
        small.fetch(s3_prefix + "a", sha256=_sha(blobs["a"]))
    assert s3_prefix + "a" in str(e.value)


def test_cache_concurrent_processes_fetch_same_file(s3_env, s3_prefix, tmp_path):
    data = _rand(3 * MiB, 11)
    uri = s3_prefix + "shared.bin"
    storage.upload_file(_write(tmp_path / "sh.bin", data), uri)
    code = textwrap.dedent(f"""
        from arinv.data.storage import LocalCache
        p = LocalCache({str(tmp_path / 'cache')!r}, max_bytes=64 << 20).fetch(
            {uri!r}, sha256={_sha(data)!r})
        print(p)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == data
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []


def test_cache_local_uris_returned_as_is(tmp_path):
    f = _write(tmp_path / "local.bin", b"local bytes")
    cache = LocalCache(tmp_path / "cache", max_bytes=MiB, verify_local=True)
    assert cache.fetch(str(f), sha256=_sha(b"local bytes")) == f
    assert cache.fetch(f"file://{f}", sha256=_sha(b"local bytes"), size=11) == f
    with pytest.raises(StorageError, match="checksum mismatch") as e:
        cache.fetch(str(f), sha256=_sha(b"other"))
    assert str(f) in str(e.value)
    with pytest.raises(StorageError, match="expected 12"):
        cache.fetch(str(f), sha256=_sha(b"local bytes"), size=12)


# ------------------------------------------------------------------------------------ errors

def test_missing_credentials_names_uri_and_fix(s3_env, s3_prefix, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")   # no instance-metadata wait
    uri = s3_prefix + "x.bin"
    t0 = time.monotonic()
    for call in (lambda: storage.check_access(uri), lambda: storage.read_bytes(uri)):
        with pytest.raises(StorageError, match="no usable AWS credentials") as e:
            call()
        assert uri in str(e.value)
        assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE" in str(e.value)
        assert "AWS_ENDPOINT_URL" in str(e.value)
    assert time.monotonic() - t0 < 10


def test_missing_bucket_names_bucket_and_uri(s3_env, tmp_path):
    uri = "s3://arinv-no-such-bucket/data/x.bin"
    for call in (lambda: storage.check_access(uri), lambda: storage.check_access(uri, write=True),
                 lambda: storage.read_bytes(uri), lambda: storage.size(uri),
                 lambda: storage.exists(uri),
                 lambda: LocalCache(tmp_path, max_bytes=MiB).fetch(uri, sha256="0" * 64)):
        with pytest.raises(StorageError, match="bucket 'arinv-no-such-bucket' does not exist") as e:
            call()
        assert uri in str(e.value) and s3_env.endpoint_url in str(e.value)


def test_check_access_ok_and_write_probe_cleaned_up(s3_env, s3_prefix):
    storage.check_access(s3_prefix)
    storage.check_access(s3_prefix, write=True)
    assert storage.list_prefix(s3_prefix) == []


def test_unreachable_endpoint_fails_fast(s3_env, monkeypatch):
    with socket.socket() as s:                    # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    uri = f"{s3_env.uri('k.bin')}"
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach") as e:
        storage.check_access(uri)                 # 2 attempts, 5 s connect timeout
    assert time.monotonic() - t0 < 5
    assert uri in str(e.value) and f"127.0.0.1:{port}" in str(e.value)
    assert "AWS_ENDPOINT_URL" in str(e.value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach"):
        storage.read_bytes(uri)
    assert time.monotonic() - t0 < 2


def test_service_specific_endpoint_wins(s3_env, s3_prefix, monkeypatch):
    """botocore itself reads AWS_ENDPOINT_URL_S3 before AWS_ENDPOINT_URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint_url)
    assert storage.s3_client().meta.endpoint_url == s3_env.endpoint_url
    storage.check_access(s3_prefix)
    fs = storage.pyarrow_s3_filesystem()
    with fs.open_output_stream(s3_prefix[len("s3://"):] + "ep.txt") as f:
        f.write(b"via AWS_ENDPOINT_URL_S3")
    assert storage.read_bytes(s3_prefix + "ep.txt") == b"via AWS_ENDPOINT_URL_S3"


def test_access_denied_and_rejected_keys_messages():
    """moto does not enforce IAM by default, so the translation is checked on the error
    botocore builds from a 403 response."""
    from botocore.exceptions import ClientError

    uri = "s3://bkt/private/x.bin"
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                          "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    msg = str(storage._storage_error(denied, uri, op="read"))
    assert uri in msg and "access denied" in msg and "AWS_PROFILE" in msg
    bad_key = ClientError({"Error": {"Code": "InvalidAccessKeyId"}}, "PutObject")
    assert "rejected the AWS credentials" in str(storage._storage_error(bad_key, uri))


def test_eval_robustness_on_a_held_out_shard_set_in_s3(s3_env, s3_prefix, tmp_path, capsys):
    """A model trained from shards is evaluated on its held-out shard set read from S3."""
    from pipelines.cli import main

    wd = tmp_path / "run"
    assert main(["train-encoder", "--config", "tiny-sample-standard", "--workdir", str(wd),
                 "--local", "--no-progress", "--set", "optim.epochs=1", "--set",
                 "data.train_per_class=2", "--set", "data.val_per_class=1", "--set",
                 "eval.pgd_eps=[0.5]", "--set", "eval.pgd_steps=1"]) == 0
    remote = s3_prefix + "val"
    storage.upload_dir(wd / "shards" / "sample-2-1" / "val", remote)
    out = tmp_path / "rob.json"
    assert main(["eval-robustness", "--checkpoint", str(wd / "checkpoint" / "state.pt"),
                 "--data", remote, "--eps", "0.5", "--steps", "1", "--json", str(out)]) in (0, 1)
    assert json.loads(out.read_text())["n"] == 8 and f"8 images of {remote}" in \
        capsys.readouterr().out
