"""Where bytes live: one API for local paths, ``file://`` URIs and ``s3://`` objects.

S3 access goes through boto3 (imported lazily, so ``import arinv`` never needs it). The client
honours the standard AWS settings that botocore reads itself: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/config``, instance
roles, and ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (or ``endpoint_url`` in the profile)
for S3-compatible stores such as MinIO or Ceph. pyarrow does not read ``AWS_ENDPOINT_URL``;
:func:`pyarrow_s3_filesystem` passes the endpoint botocore resolved explicitly.

Every failure is a :class:`StorageError` whose message names the URI and says what to do.
Run :func:`check_access` before expensive work so a wrong bucket or missing credentials fail
in seconds, not after an hour of preprocessing.

Integrity: :func:`upload_file` stores the file's SHA-256 in the object's metadata
(``x-amz-meta-sha256``) and verifies the upload (see its docstring); :class:`LocalCache`
verifies every download against the SHA-256 the caller expects (normally from a manifest).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

MiB = 1 << 20
MULTIPART_THRESHOLD = 64 * MiB   # files at least this big go up in parts
MULTIPART_CHUNKSIZE = 16 * MiB   # part size (s3transfer raises it past 10,000 parts)
MAX_CONCURRENCY = 8              # parallel part uploads / ranged downloads per file
DEFAULT_MAX_ATTEMPTS = 5         # when neither AWS_MAX_ATTEMPTS nor the profile sets one
_HASH_BLOCK = 4 * MiB

_CREDS_HINT = ("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (or run with an "
               "instance/pod role); for an S3-compatible store also set AWS_ENDPOINT_URL")


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the fix."""


# ---------------------------------------------------------------------------------------- URIs

def is_s3(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty."""
    if not is_s3(uri):
        raise StorageError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise StorageError(f"S3 URI {uri!r} has no bucket name (expected s3://bucket/key)")
    if not (3 <= len(bucket) <= 63) or any(not (c.islower() or c.isdigit() or c in ".-")
                                           for c in bucket):
        raise StorageError(f"S3 URI {uri!r}: {bucket!r} is not a valid bucket name "
                           "(3-63 characters: lower-case letters, digits, '.', '-')")
    return bucket, key


def _object(uri: str) -> tuple[str, str]:
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"S3 URI {uri!r} names a bucket or prefix, not an object")
    return bucket, key


def local_path(uri: str | os.PathLike) -> Path:
    """The local path of a plain path or ``file://`` URI (anything else raises)."""
    if isinstance(uri, os.PathLike):
        return Path(uri)
    if uri.startswith("file://"):
        p = urlparse(uri)
        if p.netloc not in ("", "localhost"):
            raise StorageError(f"file URI {uri!r} names a remote host; only local files work")
        return Path(unquote(p.path))
    if "://" in uri:
        raise StorageError(f"unsupported storage URI {uri!r}: use a local path, file:// or s3://")
    return Path(uri)


def _join(prefix: str, rel: str) -> str:
    if is_s3(prefix):
        split_s3(prefix)
        return prefix.rstrip("/") + "/" + rel
    return str(local_path(prefix) / rel)


# -------------------------------------------------------------------------------------- client

_clients: dict[tuple, tuple[Any, Any]] = {}
_clients_lock = threading.Lock()


def _session_and_client(connect_timeout: float, read_timeout: float,
                        max_attempts: int | None) -> tuple[Any, Any]:
    key = (os.getpid(), tuple(sorted((k, v) for k, v in os.environ.items()
                                     if k.startswith("AWS_"))),
           connect_timeout, read_timeout, max_attempts)
    with _clients_lock:
        hit = _clients.get(key)
        if hit is not None:
            return hit
        import boto3
        import botocore.config
        import botocore.session

        core = botocore.session.get_session()   # reads env vars, profiles, config files
        retries = {"mode": core.get_config_variable("retry_mode") or "standard",
                   "max_attempts": _max_attempts(core, max_attempts)}
        cfg = botocore.config.Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                                     retries=retries, max_pool_connections=2 * MAX_CONCURRENCY)
        session = boto3.session.Session(botocore_session=core)
        pair = (session, session.client("s3", config=cfg))
        _clients[key] = pair
        return pair


def _max_attempts(core, requested: int | None) -> int:
    return int(requested or core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS)


def s3_client(*, connect_timeout: float = 10, read_timeout: float = 60,
              max_attempts: int | None = None):
    """A boto3 S3 client from the standard AWS settings, with retries (standard mode;
    ``AWS_MAX_ATTEMPTS``/``AWS_RETRY_MODE`` or the profile win, else 5 attempts) and bounded
    timeouts. The endpoint comes from botocore itself: ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL`` / the profile's ``endpoint_url``. Clients are cached per process and
    per AWS_* environment, so calling this in a loop is cheap."""
    return _session_and_client(connect_timeout, read_timeout, max_attempts)[1]


def _is_aws_endpoint(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws"))


def pyarrow_s3_filesystem(**overrides):
    """``pyarrow.fs.S3FileSystem`` built from the same settings as :func:`s3_client`.

    pyarrow ignores ``AWS_ENDPOINT_URL``, so a non-AWS endpoint resolved by botocore is passed
    as ``endpoint_override`` (with its scheme). Credentials are never passed: a pyarrow
    filesystem pickles its options, and Ray Train and Tune store the filesystem in their state
    (``tuner.pkl`` on the storage itself), so explicit keys would be written there. pyarrow's own
    provider chain (the AWS_* variables, the shared credentials and config files with
    AWS_PROFILE, web identity, instance and pod roles) finds them on each node and refreshes
    temporary ones. ``overrides`` go straight to ``S3FileSystem`` (e.g. ``request_timeout=``)."""
    import pyarrow.fs as pafs

    session, client = _session_and_client(10, 60, None)
    kw: dict[str, Any] = {"connect_timeout": 10, "request_timeout": 60,
                          "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                              _max_attempts(session._session, None))}
    endpoint = client.meta.endpoint_url
    if endpoint and not _is_aws_endpoint(endpoint):
        p = urlparse(endpoint)
        kw["endpoint_override"] = p.netloc + p.path.rstrip("/")
        kw["scheme"] = p.scheme or "https"
    if client.meta.region_name:
        kw["region"] = client.meta.region_name
    kw.update(overrides)
    return pafs.S3FileSystem(**kw)


# -------------------------------------------------------------------------------------- errors

def _storage_error(exc: BaseException, uri: str, client=None, *, op: str = "access") -> StorageError:
    """Translate a botocore/s3transfer exception into a StorageError naming ``uri``."""
    from botocore import exceptions as bx

    if isinstance(exc, StorageError):
        return exc
    if getattr(exc, "last_exception", None) is not None:   # s3transfer RetriesExceededError
        exc = exc.last_exception
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "the S3 endpoint"
    if isinstance(exc, bx.FlexibleChecksumError):
        msg = (f"data read from {uri} does not match the checksum the store keeps for it "
               f"({exc}): retry; if it repeats, the stored object is corrupt: re-upload it")
    elif isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        msg = f"no usable AWS credentials to {op} {uri} ({exc}): {_CREDS_HINT}"
    elif isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                          bx.ConnectionClosedError, bx.ReadTimeoutError, bx.ProxyConnectionError)):
        msg = (f"cannot reach {endpoint} to {op} {uri} ({exc}): check AWS_ENDPOINT_URL / "
               "AWS_ENDPOINT_URL_S3 (for MinIO or another S3-compatible store), the network, "
               "and HTTPS_PROXY/NO_PROXY")
    elif isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = split_s3(uri)[0] if is_s3(uri) else "?"
        if code == "NoSuchBucket" or (code == "404" and exc.operation_name == "HeadBucket"):
            msg = (f"bucket {bucket!r} does not exist at {endpoint} (for {uri}): create it, fix "
                   "the URI, or point AWS_ENDPOINT_URL at the store that has it")
        elif code in ("NoSuchKey", "404", "NotFound"):
            msg = (f"no object at {uri}: check the path; if a writer is still uploading, wait for "
                   "its manifest")
        elif code in ("AccessDenied", "403", "AllAccessDisabled", "AccountProblem"):
            msg = (f"access denied to {op} {uri}: the credentials in use lack permission "
                   "(s3:GetObject / s3:PutObject / s3:ListBucket); check the IAM or bucket "
                   f"policy, or pick other credentials with AWS_PROFILE. {_CREDS_HINT}")
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                      "InvalidToken", "TokenRefreshRequired"):
            msg = (f"the store rejected the AWS credentials ({code}) for {uri}: refresh or fix "
                   f"them; {_CREDS_HINT}")
        elif code == "InvalidRange":
            msg = f"byte range outside the object {uri}: check offset/size against its size"
        else:
            msg = f"S3 request to {op} {uri} failed ({code or status}): {exc}"
    elif isinstance(exc, OSError):
        msg = f"cannot {op} {uri}: {exc}"
    else:
        msg = f"cannot {op} {uri}: {type(exc).__name__}: {exc}"
    err = StorageError(msg)
    err.__cause__ = exc
    return err


def _missing_object_error(client, uri: str, exc: BaseException) -> StorageError:
    """HEAD answers 404 without a body for both a missing key and a missing bucket: ask."""
    bucket, _ = split_s3(uri)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as bexc:  # noqa: BLE001 - translated below
        return _storage_error(bexc, uri, client)
    return _storage_error(exc, uri, client)


def _is_not_found(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in (
        "404", "NoSuchKey", "NotFound")


def _head(client, uri: str) -> dict:
    bucket, key = _object(uri)
    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as exc:
        if _is_not_found(exc):
            raise _missing_object_error(client, uri, exc) from exc
        raise _storage_error(exc, uri, client, op="read") from exc


# ---------------------------------------------------------------------------------- reads etc.

def check_access(uri: str, write: bool = False, *, client=None) -> None:
    """Fail fast (seconds) if ``uri`` cannot be listed (or, with ``write``, written).

    S3: HeadBucket, a one-key list under the URI's key, and with ``write`` a tiny object put
    and deleted under the prefix. Uses two attempts and a 5 s connect timeout unless a client
    is given. Local: the directory (or the parent of a file path) must exist / be writable."""
    if not is_s3(uri):
        p = local_path(uri)
        d = p if p.is_dir() else p.parent
        if not d.is_dir():
            raise StorageError(f"local directory {d} (for {uri}) does not exist: create it")
        if write and not os.access(d, os.W_OK):
            raise StorageError(f"local directory {d} (for {uri}) is not writable: fix permissions")
        return
    client = client or s3_client(connect_timeout=5, max_attempts=2)
    bucket, key = split_s3(uri)
    op = "write" if write else "list"
    try:
        client.head_bucket(Bucket=bucket)
        client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        if write:
            probe = (key.rstrip("/") + "/" if key else "") + f".arinv-write-check-{uuid.uuid4().hex}"
            client.put_object(Bucket=bucket, Key=probe, Body=b"")
            client.delete_object(Bucket=bucket, Key=probe)
    except Exception as exc:
        raise _storage_error(exc, uri, client, op=op) from exc


def exists(uri: str, *, client=None) -> bool:
    """Whether the object/file exists. A missing *bucket* raises (a config error, not 'no')."""
    if not is_s3(uri):
        return local_path(uri).is_file()
    client = client or s3_client()
    bucket, key = _object(uri)
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        if not _is_not_found(exc):
            raise _storage_error(exc, uri, client, op="read") from exc
    try:
        client.head_bucket(Bucket=bucket)   # 404 above may mean "no bucket": that must raise
    except Exception as exc:
        raise _storage_error(exc, uri, client) from exc
    return False


def size(uri: str, *, client=None) -> int:
    if not is_s3(uri):
        try:
            return local_path(uri).stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot stat {uri}: {exc}") from exc
    return int(_head(client or s3_client(), uri)["ContentLength"])


def read_bytes(uri: str, *, client=None) -> bytes:
    if not is_s3(uri):
        try:
            return local_path(uri).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc
    client = client or s3_client()
    bucket, key = _object(uri)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if _is_not_found(exc):
            raise _missing_object_error(client, uri, exc) from exc
        raise _storage_error(exc, uri, client, op="read") from exc


def read_range(uri: str, offset: int, size: int, *, client=None) -> bytes:
    """``size`` bytes from ``offset`` (an HTTP range GET on S3, a seek locally). Reading past
    the end raises rather than returning short."""
    if offset < 0 or size < 0:
        raise StorageError(f"bad range for {uri}: offset={offset}, size={size}")
    if size == 0:
        return b""
    if is_s3(uri):
        client = client or s3_client()
        bucket, key = _object(uri)
        try:
            data = client.get_object(Bucket=bucket, Key=key,
                                     Range=f"bytes={offset}-{offset + size - 1}")["Body"].read()
        except Exception as exc:
            if _is_not_found(exc):
                raise _missing_object_error(client, uri, exc) from exc
            raise _storage_error(exc, uri, client, op="read") from exc
    else:
        try:
            with open(local_path(uri), "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc
    if len(data) != size:
        raise StorageError(f"range {offset}+{size} runs past the end of {uri} "
                           f"(got {len(data)} bytes): check the offsets against its size")
    return data


def list_prefix(uri_prefix: str, *, client=None) -> list[str]:
    """Sorted URIs of all objects under a prefix. S3 prefixes are string prefixes (end one with
    '/' to mean a directory); a local prefix is a directory, listed recursively."""
    if not is_s3(uri_prefix):
        root = local_path(uri_prefix)
        if not root.exists():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    client = client or s3_client()
    bucket, key = split_s3(uri_prefix)
    out = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
    except Exception as exc:
        raise _storage_error(exc, uri_prefix, client, op="list") from exc
    return sorted(out)


# ------------------------------------------------------------------------------------- hashing

def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _hash_with_parts(path: Path, part_size: int | None) -> tuple[str, str | None, int]:
    """(hex sha256, base64 S3 composite SHA-256 or None, number of parts) in one read."""
    whole = hashlib.sha256()
    parts: list[bytes] = []
    with open(path, "rb") as f:
        while True:
            block = f.read(part_size or _HASH_BLOCK)
            if not block:
                break
            whole.update(block)
            if part_size:
                parts.append(hashlib.sha256(block).digest())
    composite = (base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
                 if part_size else None)
    return whole.hexdigest(), composite, max(1, len(parts))


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


# ------------------------------------------------------------------------------------- uploads

def _transfer_config(multipart_threshold: int, multipart_chunksize: int):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=multipart_threshold,
                          multipart_chunksize=multipart_chunksize,
                          max_concurrency=MAX_CONCURRENCY,
                          preferred_transfer_client="classic")  # predictable part sizes


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a local file (its folders made) or an S3 object (through
    :func:`upload_file`, checksum kept), replacing what was there."""
    if not is_s3(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "object").write_bytes(data)
        upload_file(Path(d) / "object", str(uri))


def upload_file(local_path_: str | os.PathLike, uri: str, *, sha256: str | None = None,
                verify: str = "checksum", client=None,
                multipart_threshold: int = MULTIPART_THRESHOLD,
                multipart_chunksize: int = MULTIPART_CHUNKSIZE) -> dict:
    """Upload one file to ``uri`` (S3, or a local path/file:// via an atomic copy) and verify it.

    Returns ``{"uri", "size", "sha256", "parts", "verified"}``.

    Verification (``verify="checksum"``, the default; cost: one local read of the file to hash
    it, one HEAD request, no extra bytes over the network):

    1. The file is hashed locally (SHA-256, plus per-part SHA-256s when it goes up in parts).
       If ``sha256`` is given and differs, nothing is uploaded: the local file is not the one
       the caller meant.
    2. It is uploaded with S3 flexible checksums (``ChecksumAlgorithm="SHA256"``): the SDK
       sends each PUT/part's SHA-256 and S3 rejects a body that does not match it
       (``BadDigest``). The hex SHA-256 also goes into the metadata (``x-amz-meta-sha256``).
    3. A HEAD with ``ChecksumMode=ENABLED`` reads back the checksum the *store* recorded and
       compares it with the local value: for a single PUT that is the SHA-256 of the object;
       for a multipart upload S3 records a *composite* checksum, SHA-256 of the concatenated
       part SHA-256s (shown as ``<b64>-<parts>``), which is recomputed locally from the same
       part size s3transfer used. Size and metadata are compared too.

    What it proves depends on the store: real S3 checks each part's checksum on receipt, so a
    match means S3 holds exactly the local bytes. Some stores only echo the client's header
    (moto does for single PUTs; it does recompute multipart composites from the stored parts).
    Where the store returns no SHA-256 checksum at all (older S3-compatible stores),
    ``"checksum"`` falls back to ``"read"``. ``verify="read"`` re-downloads the whole object and
    hashes it: independent of the store's checksum support, at the cost of a full download.

    A mismatch raises :class:`StorageError` naming the URI; the bad object is deleted.
    """
    if verify not in ("checksum", "read"):
        raise ValueError(f"verify must be 'checksum' or 'read', got {verify!r}")
    src = Path(local_path_)
    try:
        nbytes = src.stat().st_size
    except OSError as exc:
        raise StorageError(f"cannot upload {src} to {uri}: {exc}") from exc

    if not is_s3(uri):
        return _copy_local(src, uri, nbytes, sha256)

    from s3transfer.utils import ChunksizeAdjuster

    multipart = nbytes >= multipart_threshold
    part_size = ChunksizeAdjuster().adjust_chunksize(multipart_chunksize, nbytes) if multipart else None
    try:
        local_hex, composite, nparts = _hash_with_parts(src, part_size)
    except OSError as exc:
        raise StorageError(f"cannot read {src} to upload it to {uri}: {exc}") from exc
    if sha256 is not None and sha256.lower() != local_hex:
        raise StorageError(f"{src} has sha256 {local_hex}, not the expected {sha256}; nothing "
                           f"was uploaded to {uri}: the local file changed since its checksum "
                           "was recorded; regenerate it or its manifest")

    from boto3.s3.transfer import create_transfer_manager

    client = client or s3_client()
    bucket, key = _object(uri)
    extra = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": local_hex}}
    try:
        with create_transfer_manager(client, _transfer_config(multipart_threshold,
                                                              multipart_chunksize)) as tm:
            tm.upload(str(src), bucket, key, extra_args=extra).result()
    except Exception as exc:
        raise _storage_error(exc, uri, client, op="upload to") from exc

    head = _head(client, uri)
    stored, _, stored_parts = (head.get("ChecksumSHA256") or "").partition("-")
    expected = composite if multipart else _b64(local_hex)
    problems = []
    if int(head["ContentLength"]) != nbytes:
        problems.append(f"size {head['ContentLength']} != local {nbytes}")
    if head.get("Metadata", {}).get("sha256") != local_hex:
        problems.append("metadata sha256 missing or different")
    how = verify
    if verify == "checksum" and not stored:
        how = "read"   # the store keeps no SHA-256 checksum: fall back to re-reading
    if stored_parts and int(stored_parts) != nparts:
        problems.append(f"store has {stored_parts} parts, expected {nparts}")
    if how == "checksum" and stored != expected:
        problems.append(f"store checksum {stored} != local "
                        f"{'composite (' + str(nparts) + ' parts) ' if multipart else ''}{expected}")
    if how == "read":
        try:
            got = _sha256_remote(client, uri)
        except StorageError as exc:   # botocore found the body != the store's own checksum
            if type(exc.__cause__).__name__ != "FlexibleChecksumError":
                raise
            got = f"(body failed the store's checksum: {exc.__cause__})"
        if got != local_hex:
            problems.append(f"re-read sha256 {got} != local {local_hex}")
    if problems:
        _discard(client, bucket, key,
                 f"upload of {src} to {uri} did not verify ({'; '.join(problems)}); the object "
                 "was deleted: upload again, and if it repeats check the network path / proxy "
                 "and the store's checksum support (verify='read' checks by re-downloading)")
    return {"uri": uri, "size": nbytes, "sha256": local_hex, "parts": nparts, "verified": how}


def _discard(client, bucket: str, key: str, message: str):
    """Delete an object that failed verification, then raise ``message``."""
    with contextlib.suppress(Exception):   # the error below is the one that matters
        client.delete_object(Bucket=bucket, Key=key)
    raise StorageError(message)


def _sha256_remote(client, uri: str) -> str:
    bucket, key = _object(uri)
    h = hashlib.sha256()
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(_HASH_BLOCK):
            h.update(chunk)
    except Exception as exc:
        raise _storage_error(exc, uri, client, op="read back") from exc
    return h.hexdigest()


def _copy_local(src: Path, uri: str, nbytes: int, sha256: str | None) -> dict:
    dst = local_path(uri)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp)
        got = sha256_file(tmp)
        want = sha256.lower() if sha256 else sha256_file(src)
        if got != want:
            raise StorageError(f"copy of {src} to {uri} has sha256 {got}, expected {want}: the "
                               "source changed during the copy or its checksum is stale")
        os.replace(tmp, dst)
    except OSError as exc:
        raise StorageError(f"cannot copy {src} to {uri}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"uri": str(dst), "size": nbytes, "sha256": got, "parts": 1, "verified": "read"}


def upload_dir(local_dir: str | os.PathLike, uri_prefix: str, *, manifest: dict | None = None,
               publish_last: str | None = "manifest.json", client=None, **upload_kw) -> dict:
    """Upload every file under ``local_dir`` to ``uri_prefix``, publishing the manifest LAST.

    The manifest is ``manifest`` (a dict, written as JSON) or else the local file
    ``local_dir/publish_last``; one of them must exist unless ``publish_last=None``. A manifest
    already at the destination is deleted *first*, so during a re-upload the set is never
    mistaken for complete; readers must check for the manifest before reading. If any file
    fails, the manifest is not written. ``upload_kw`` goes to :func:`upload_file`.

    Returns ``{relative path: upload_file result}`` (the manifest under ``publish_last``)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"cannot upload {root} to {uri_prefix}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rels = [p.relative_to(root).as_posix() for p in files]
    local_manifest = root / publish_last if publish_last else None
    if publish_last:
        if manifest is not None and local_manifest.is_file():
            raise StorageError(f"both manifest= and {local_manifest} given for {uri_prefix}: "
                               "pass one")
        if manifest is None and not local_manifest.is_file():
            raise StorageError(f"nothing marks the upload to {uri_prefix} complete: write "
                               f"{local_manifest}, pass manifest=, or pass publish_last=None")
    if is_s3(uri_prefix):
        client = client or s3_client()
    manifest_uri = _join(uri_prefix, publish_last) if publish_last else None
    if manifest_uri:
        _delete(manifest_uri, client)

    results = {}
    for path, rel in zip(files, rels):
        if rel == publish_last:
            continue
        results[rel] = upload_file(path, _join(uri_prefix, rel), client=client, **upload_kw)
    if manifest_uri:
        if manifest is not None:
            fd, name = tempfile.mkstemp(prefix="arinv-manifest-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
            src = Path(name)
        else:
            src = local_manifest
        try:
            results[publish_last] = upload_file(src, manifest_uri, client=client, **upload_kw)
        finally:
            if manifest is not None:
                src.unlink(missing_ok=True)
    return results


def _delete(uri: str, client=None) -> None:
    if not is_s3(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    bucket, key = _object(uri)
    try:
        client.delete_object(Bucket=bucket, Key=key)   # no error if absent
    except Exception as exc:
        raise _storage_error(exc, uri, client, op="delete") from exc


def delete(uri: str, *, client=None) -> None:
    """Delete one object or file; no error if it is already gone."""
    _delete(uri, client or (s3_client() if is_s3(uri) else None))


def delete_prefix(uri_prefix: str, *, client=None) -> int:
    """Delete every object (or file, recursively) under a prefix; returns how many."""
    if is_s3(uri_prefix):
        client = client or s3_client()
    uris = list_prefix(uri_prefix, client=client)
    for uri in uris:
        _delete(uri, client)
    return len(uris)


COPY_OBJECT_LIMIT = 5 * 1024 ** 3   # one CopyObject request copies at most 5 GiB


def copy_object(src_uri: str, dst_uri: str, *, sha256: str, size: int, client=None) -> dict:
    """Server-side copy of one S3 object to another key (no bytes pass through this machine),
    verified against the ``sha256`` and ``size`` the caller expects, e.g. from a manifest.

    The copy is made with ``ChecksumAlgorithm="SHA256"``, so the store computes the new object's
    SHA-256 itself; a HEAD compares it and the size. Objects over 5 GiB are copied in parts,
    whose composite checksum cannot be compared, and stores that keep no SHA-256 return none:
    those copies are verified by re-reading them. A mismatch deletes the copy and raises
    :class:`StorageError`. Returns ``{"uri", "size", "sha256", "verified"}``."""
    from boto3.s3.transfer import create_transfer_manager

    client = client or s3_client()
    src_bucket, src_key = _object(src_uri)
    bucket, key = _object(dst_uri)
    try:
        with create_transfer_manager(client, _transfer_config(COPY_OBJECT_LIMIT,
                                                              MULTIPART_CHUNKSIZE)) as tm:
            tm.copy({"Bucket": src_bucket, "Key": src_key}, bucket, key,
                    extra_args={"ChecksumAlgorithm": "SHA256"}).result()
    except Exception as exc:
        if _is_not_found(exc):
            raise _missing_object_error(client, src_uri, exc) from exc
        raise _storage_error(exc, dst_uri, client, op="copy to") from exc
    head = _head(client, dst_uri)
    stored, _, parts = (head.get("ChecksumSHA256") or "").partition("-")
    how = "checksum" if stored and not parts else "read"
    problems = []
    if int(head["ContentLength"]) != size:
        problems.append(f"size {head['ContentLength']} != expected {size}")
    got = stored if how == "checksum" else _sha256_remote(client, dst_uri)
    if got != (_b64(sha256) if how == "checksum" else sha256.lower()):
        problems.append(f"sha256 differs from the expected {sha256}")
    if problems:
        _discard(client, bucket, key,
                 f"copy of {src_uri} to {dst_uri} did not verify ({'; '.join(problems)}); the "
                 "copy was deleted: the source object is not the one expected (re-upload it), "
                 "or the store altered it")
    return {"uri": dst_uri, "size": size, "sha256": sha256.lower(), "verified": how}


# --------------------------------------------------------------------------------- local cache

class LocalCache:
    """Node-local cache of remote files, bounded by ``max_bytes`` with LRU eviction.

    ``fetch(uri, sha256=...)`` returns a local path whose content has that SHA-256:

    * miss: download to a per-process temporary name under ``root/.tmp``, check size and
      SHA-256, then ``os.replace`` into place (atomic), write a sidecar ``<name>.sha256``
      (JSON: uri, sha256, size), and evict least-recently-used files until the total is at most
      ``max_bytes``; the file being returned is never evicted. A mismatch deletes the download
      (and any stale cached copy) and raises :class:`StorageError` naming the URI.
    * hit: if the file's size and the sidecar's sha256/size match what the caller expects, the
      file is returned **without re-hashing** (trusting the local disk; that is what makes hits
      cheap) and without any request to the store; the sidecar's mtime records the use for LRU.
      A file without a matching sidecar is hashed once; if it matches, it is kept.
    * two processes fetching the same file both download under their own temporary names; the
      renames are atomic and the content identical, so either result is fine. Renames and
      eviction run under an ``flock`` on ``root/.lock``. A path another process is still
      reading survives eviction (POSIX unlink), but size ``max_bytes`` above the working set.
    * local paths and ``file://`` URIs are returned as they are; their size is checked when
      given, and their SHA-256 only with ``verify_local=True`` (it costs a full read).
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, *, verify_local: bool = False,
                 client=None):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.verify_local = verify_local
        self._client = client
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # names ---------------------------------------------------------------------------------
    def path_for(self, uri: str) -> Path:
        base = "".join(c if c.isalnum() or c in "._-" else "_" for c in uri.rsplit("/", 1)[-1])
        return self.root / f"{hashlib.sha256(uri.encode()).hexdigest()[:20]}-{base[-80:]}"

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".sha256")

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every cached data file."""
        out = []
        for p in self.root.iterdir():
            if p.name.startswith(".") or p.name.endswith(".sha256") or not p.is_file():
                continue
            try:
                side = self._sidecar(p)
                used = (side if side.exists() else p).stat().st_mtime
                out.append((used, p.stat().st_size, p))
            except FileNotFoundError:   # evicted by another process meanwhile
                continue
        return out

    def cached_bytes(self) -> int:
        return sum(s for _, s, _ in self._entries())

    # locking --------------------------------------------------------------------------------
    class _Flock:
        def __init__(self, cache: LocalCache):
            self.cache = cache

        def __enter__(self):
            self.cache._lock.acquire()
            self.fd = os.open(self.cache.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                import fcntl
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except ImportError:   # not POSIX: the thread lock still holds within the process
                pass

        def __exit__(self, *exc):
            os.close(self.fd)      # releases the flock
            self.cache._lock.release()

    def _evict(self, keep: Path | None, budget: int) -> None:
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(s for _, s, _ in entries)
        for _, s, p in entries:
            if total <= budget:
                break
            if keep is not None and p == keep:
                continue
            p.unlink(missing_ok=True)
            self._sidecar(p).unlink(missing_ok=True)
            total -= s

    # fetch ----------------------------------------------------------------------------------
    def _hit(self, path: Path, sha256: str, size: int | None) -> bool:
        try:
            st = path.stat()
            meta = json.loads(self._sidecar(path).read_text())
        except (OSError, ValueError):
            return False
        return (meta.get("sha256") == sha256 and meta.get("size") == st.st_size
                and (size is None or size == st.st_size))

    def _write_sidecar(self, path: Path, uri: str, sha256: str, nbytes: int) -> None:
        side = self._sidecar(path)
        tmp = self.root / ".tmp" / f"{side.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"uri": uri, "sha256": sha256, "size": nbytes}))
        os.replace(tmp, side)

    def fetch(self, uri: str, *, sha256: str, size: int | None = None) -> Path:
        sha256 = sha256.lower()
        if not is_s3(uri):
            return self._check_local(uri, sha256, size)
        path = self.path_for(uri)
        if self._hit(path, sha256, size):
            try:
                os.utime(self._sidecar(path))      # LRU: mark as used
                return path
            except FileNotFoundError:              # evicted by another process just now
                pass
        if path.is_file() and (size is None or path.stat().st_size == size) \
                and sha256_file(path) == sha256:   # sidecar lost (e.g. crash): hash once
            with self._Flock(self):
                self._write_sidecar(path, uri, sha256, path.stat().st_size)
            return path

        client = self._client or s3_client()
        if size is None:
            size = int(_head(client, uri)["ContentLength"])
        if size > self.max_bytes:
            raise StorageError(f"{uri} is {size} bytes, more than the cache's max_bytes "
                               f"{self.max_bytes} at {self.root}: raise max_bytes")
        with self._Flock(self):                     # make room first, so the disk cannot fill
            if self._hit(path, sha256, size):      # another process fetched it meanwhile
                return path
            path.unlink(missing_ok=True)           # a stale copy with another checksum
            self._sidecar(path).unlink(missing_ok=True)
            self._evict(None, self.max_bytes - size)

        tmp = self.root / ".tmp" / f"{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"
        try:
            self._download(client, uri, tmp)
            got_size = tmp.stat().st_size
            got = sha256_file(tmp) if got_size == size else None
            if got != sha256:
                raise StorageError(
                    f"checksum mismatch for {uri}: expected sha256 {sha256} and {size} bytes, "
                    f"downloaded {got_size} bytes with sha256 {got or '(not computed)'}. The "
                    "object changed or was corrupted after its manifest was written: re-upload "
                    "it or regenerate the manifest. Nothing was cached.")
            with self._Flock(self):
                os.replace(tmp, path)
                self._write_sidecar(path, uri, sha256, got_size)
                self._evict(path, self.max_bytes)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _download(self, client, uri: str, dest: Path) -> None:
        from boto3.s3.transfer import create_transfer_manager

        bucket, key = _object(uri)
        try:
            with create_transfer_manager(client, _transfer_config(MULTIPART_THRESHOLD,
                                                                  MULTIPART_CHUNKSIZE)) as tm:
                tm.download(bucket, key, str(dest)).result()
        except Exception as exc:
            if _is_not_found(exc):
                raise _missing_object_error(client, uri, exc) from exc
            raise _storage_error(exc, uri, client, op="download") from exc

    def _check_local(self, uri: str, sha256: str, size: int | None) -> Path:
        p = local_path(uri)
        if not p.is_file():
            raise StorageError(f"no file at {uri}: check the path")
        if size is not None and p.stat().st_size != size:
            raise StorageError(f"{uri} is {p.stat().st_size} bytes, expected {size}: the file "
                               "changed after its manifest was written; regenerate one of them")
        if self.verify_local and sha256_file(p) != sha256:
            raise StorageError(f"checksum mismatch for {uri}: expected sha256 {sha256}; the file "
                               "changed after its manifest was written; regenerate one of them")
        return p

    def clean_tmp(self, older_than_s: float = 24 * 3600) -> None:
        """Remove temporary downloads left by crashed processes."""
        cutoff = time.time() - older_than_s
        for p in (self.root / ".tmp").iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except FileNotFoundError:
                pass
