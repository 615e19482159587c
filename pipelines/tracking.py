"""MLflow runs: one run per training run (found again by a tag on retries) and a non-blocking
logger for the training loop. The registry lives in ``pipelines.registry``.

Everything talks to MLflow through ``MlflowClient(tracking_uri)``, never the fluent active-run
state, so it is safe inside Ray workers. The registry functions (``pipelines.registry``) set the global tracking URI
for their duration: ``mlflow.models.Model.log``, the download of ``models:/`` / ``runs:/`` URIs
and a sqlite registry resolving ``models:/m-...`` sources all read it, whatever client they are
called through.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # no public equivalent

from arinv.config import ConfigError
from pipelines.errors import (  # noqa: F401  (raised here, caught by the CLI)
    TrackingRefused,
    TrackingUnreachable,
)

RUN_KEY_TAG = "arinv.run_key"
KIND_TAG = "arinv.kind"
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this names

_log = logging.getLogger(__name__)

# MLflow's request limits (mlflow.utils.validation).
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

# Error codes that mean "this request is wrong": retrying cannot help.
_REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
             "MALFORMED_REQUEST", "RESOURCE_ALREADY_EXISTS"}

# MLflow retries each request up to 7 times with exponential backoff (minutes in all) by default.
# RunLogger retries on its own, so in its process these become short unless already set.
SHORT_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}




def default_tracking_uri(folder=None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``mlflow.db`` (sqlite) in ``folder`` (default: the
    current folder): every command run from a folder shares one tracking store and registry,
    the one a bare ``mlflow`` client (or ``mlflow ui``) started there finds. (MLflow 3 refuses
    the plain file store, and the registry needs a database.)"""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return checked_uri(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    return f"sqlite:///{Path(folder or Path.cwd()).resolve() / 'mlflow.db'}"


def checked_uri(uri: str, where: str = "--tracking-uri") -> str:
    """``uri``, refused when it carries a password: a tracking URI is printed, logged in
    reports and results.json and stored in Ray Train's and Tune's configs, so credentials go
    in the environment instead. The error shows the URI with the password masked."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return uri
    if password:
        masked = uri.replace(f":{password}@", ":***@", 1)
        raise ConfigError(f"{where}: {masked} carries a password, and tracking URIs are logged "
                          "and stored; give the URI without it and the credentials as "
                          "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (an MLflow "
                          "server) or PGPASSWORD / ~/.pgpass (a PostgreSQL database URI)")
    return absolute_sqlite(uri)


def absolute_sqlite(uri: str) -> str:
    """A relative sqlite URI (``sqlite:///runs/mlflow.db``) made absolute against the current
    folder, where the user meant it: Ray workers and the artifact locations of new experiments
    would otherwise resolve it elsewhere. Other URIs unchanged."""
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if not path or path.startswith("/") or path == ":memory:":
        return uri
    return f"sqlite:///{Path(path).resolve()}"


def is_unreachable(e: BaseException) -> bool:
    """True when ``e`` (or what it wraps) is a failed connection or a timeout."""
    import requests

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError,
                          TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False


_CHECKED: set = set()  # tracking URIs this process reached with its credentials


def check_access(tracking_uri: str) -> str:
    """``tracking_uri`` once an MLflow server there answered a read with this process's
    credentials (once per URI and process; nothing to check for a database URI). Called before
    a command starts Ray, so that a server that is down (TrackingUnreachable) or refuses the
    credentials (TrackingRefused) fails it at once, not after the cluster started."""
    if tracking_uri in _CHECKED or not tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    with _explain_unreachable(tracking_uri, "checking access"):
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    _CHECKED.add(tracking_uri)
    return tracking_uri


@contextmanager
def _explain_unreachable(tracking_uri: str, doing: str):
    """Turns a failed connection into TrackingUnreachable and a 401 / 403 answer into
    TrackingRefused, both naming the server and what to do."""
    try:
        yield
    except Exception as e:
        if is_unreachable(e):
            raise TrackingUnreachable(
                f"MLflow tracking server {tracking_uri} unreachable while {doing} ({_short(e)}). "
                "Start it, or point MLFLOW_TRACKING_URI / the tracking_uri argument at a running "
                "one.") from e
        code = getattr(e, "error_code", None)
        if code == "UNAUTHENTICATED":
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise TrackingRefused(
                f"MLflow tracking server {tracking_uri} refused the request while {doing}: not "
                "authenticated (401). " + (
                    f"The password in MLFLOW_TRACKING_PASSWORD is wrong for user {who!r}."
                    if who else "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                    "(for infra/local/stack.sh: source .stack/stack.env).")) from e
        if code == "PERMISSION_DENIED":
            raise TrackingRefused(
                f"MLflow tracking server {tracking_uri} refused the request while {doing}: user "
                f"{os.environ.get('MLFLOW_TRACKING_USERNAME')!r} lacks permission (403); ask "
                "the server's admin for it, or use another experiment") from e
        raise


@contextmanager
def use_tracking_uri(uri: str):
    """MLflow's ``_use_tracking_uri`` also deletes $MLFLOW_TRACKING_URI on exit when the URI came
    from there (set_tracking_uri(None) unsets it); put it back, and the import path too
    (loading a model to check its input example prepends the model's code dir to sys.path)."""
    env, path = os.environ.get("MLFLOW_TRACKING_URI"), list(sys.path)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        sys.path[:] = path
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _short(e: BaseException, n: int = 300) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= n else text[:n] + "..."


# ------------------------------------------------------------------------------------ runs

def find_or_create_run(tracking_uri: str, experiment: str, run_key: str, *, run_name: str,
                       tags: dict | None = None) -> str:
    """The id of the run tagged ``arinv.run_key=run_key`` in ``experiment`` (both created when
    missing). A retried or resumed training run finds its run again; a finished or failed one
    is set back to RUNNING."""
    if not run_key or "'" in run_key or "`" in run_key:
        raise ValueError(f"run_key {run_key!r}: must be non-empty, without quotes or backticks")
    client = MlflowClient(tracking_uri)
    with _explain_unreachable(tracking_uri, f"looking up run {run_key!r}"):
        exp_id = _experiment_id(client, experiment, tracking_uri)
        runs = client.search_runs([exp_id], f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                                  max_results=10, order_by=["attributes.start_time ASC"])
        if not runs:
            all_tags = {**{k: str(v) for k, v in (tags or {}).items()}, RUN_KEY_TAG: run_key}
            return client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
        if len(runs) > 1:
            _log.warning("%d runs in experiment %r carry %s=%s; using the oldest, %s",
                         len(runs), experiment, RUN_KEY_TAG, run_key, runs[0].info.run_id)
        run = runs[0].info
        if run.status != "RUNNING":
            client.update_run(run.run_id, status="RUNNING")
        return run.run_id


def find_run(tracking_uri: str, experiment: str, run_key: str) -> str | None:
    """The id of the run tagged ``arinv.run_key=run_key`` (the oldest), or None."""
    client = MlflowClient(tracking_uri)
    with _explain_unreachable(tracking_uri, f"looking up run {run_key!r}"):
        exp = client.get_experiment_by_name(experiment)
        runs = [] if exp is None else client.search_runs(
            [exp.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1,
            order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, _artifact_location(tracking_uri, name))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":  # else another process just made it
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it "
                         f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or "
                         "use another experiment name")
    return exp.experiment_id


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Next to a sqlite database; MLflow's default there is ./mlruns of the *current*
    directory, which differs between the driver and Ray workers. A server decides for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(absolute_sqlite(tracking_uri)[len("sqlite:///"):])
    return (db.parent / "mlartifacts" / _safe(experiment)).as_uri()


# ------------------------------------------------------------------------------- RunLogger

class RunLogger:
    """Logs to one run from a background thread so training never waits on, or dies from,
    an unreachable tracking server: calls enqueue and return at once; the thread delivers in
    order, retrying a failed delivery every ``retry_interval`` seconds (``flush`` retries at
    once); logged warnings say what is pending while the server is unreachable.

    Items the server refuses (an invalid name, a deleted run) are dropped with a warning and
    make ``flush`` / ``close`` return False. With ``short_http_retries`` (default) MLflow's own
    per-request retries in this process become short (:data:`SHORT_HTTP_SETTINGS`, only where
    the variables are unset): MLflow's default backoff would delay recovery by minutes.
    Call ``close`` at the end: the thread is a daemon, so unflushed items die with the process.

    The queue is bounded, so a long outage cannot grow memory without limit: it holds at most
    ``max_pending`` units, one per metric point and one per params, tags or artifact call.
    At the bound:

    * a metrics batch never waits. The queued metric points (all but those being delivered)
      and the new batch are coalesced: per (key, step) only the latest value is kept, then, if
      that is still too many, each key keeps only its newest N steps (N as large as fits, the
      same for every key; keys with fewer points keep them all), down to 7/8 of the room so
      the next batches append without coalescing again. The oldest points are dropped; params,
      tags, artifacts and the final status never are. A warning (at most one a minute) says
      how many points were dropped; ``dropped_metrics`` counts them.
    * params / tags / artifacts first make room by dropping the oldest metric points as above;
      when only non-metric items (or the batch being delivered) fill the queue, the call
      waits until the delivery thread frees room, for at most ``put_timeout`` seconds
      (default 30: a short hiccup costs nothing, a long outage at most that per call), then
      drops the item with a warning (``dropped_items`` counts them).
    * the final status of ``close`` is always queued (it may exceed the bound by one).

    Anything dropped makes ``flush`` / ``close`` return False, like a refused item.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, retry_interval: float = 5.0,
                 short_http_retries: bool = True, max_pending: int = 10_000,
                 put_timeout: float = 30.0):
        if max_pending < 1:
            raise ValueError(f"max_pending={max_pending}: must be >= 1")
        if short_http_retries:
            for k, v in SHORT_HTTP_SETTINGS.items():
                os.environ.setdefault(k, v)
        self.tracking_uri, self.run_id, self.retry_interval = tracking_uri, run_id, retry_interval
        self.max_pending, self.put_timeout = max_pending, put_timeout
        self.rejected = 0                    # items the server refused
        self.dropped_metrics = 0             # metric points dropped at the bound
        self.dropped_items = 0               # params / tags / artifacts dropped at the bound
        self._items: deque = deque()         # (kind, payload, seq); popped once delivered
        self._units = 0                      # queued metric points + other items (<= max_pending)
        self._cond = threading.Condition()
        self._order = itertools.count(1)     # seq: flush waits for the items queued before it
        self._last_seq = 0
        self._inflight = 0                   # head items the thread is delivering: never coalesced
        self._dropped_unwarned = 0
        self._next_drop_warning = 0.0
        self._closed = self._stop = self._retry_now = False
        self._spool_dir: Path | None = None  # artifact copies: made at the first log_artifact
        self._seq = itertools.count()
        self._client = None
        self._params: dict | None = None     # the run's params as the server has them
        self._skipped_metrics: set = set()
        self._down_since = self._next_warning = None
        self._unmerged = 0                   # items to send one by one (a merged batch was refused)
        self._thread = threading.Thread(target=self._loop, name=f"RunLogger-{run_id[:8]}",
                                        daemon=True)
        self._thread.start()

    # -- training side: never blocks on the network (only, at the bound, non-metric items may
    # wait up to put_timeout for room)
    @property
    def pending(self) -> int:
        """Queued items (a metrics item holds one or more points)."""
        return len(self._items)

    def log_params(self, params: dict) -> None:
        """Params are write-once: a key already on the run with the same value is skipped, a
        different value is skipped with a warning. Values are stringified and truncated."""
        clean = {str(k): str(v)[:_MAX_PARAM_VALUE] for k, v in params.items()}
        if clean:
            self._put("params", clean)

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Numeric, finite values only; others are skipped (with one warning per key)."""
        ts = int(time.time() * 1000)  # fixed now, so a retried delivery is a duplicate MLflow drops
        batch = []
        for k, v in metrics.items():
            value = _as_float(v)
            if value is None or not math.isfinite(value):
                if k not in self._skipped_metrics:
                    self._skipped_metrics.add(k)
                    _log.warning("RunLogger: metric %r=%r is not a finite number; skipped", k, v)
                continue
            batch.append(Metric(str(k), value, ts, int(step)))
        if batch:
            self._put("metrics", batch)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        """Copies the file or directory now (the caller may change or delete it); uploads later.
        A path that cannot be copied is skipped with a warning."""
        self._check_open()
        src = Path(path)
        if self._spool_dir is None:
            self._spool_dir = Path(tempfile.mkdtemp(prefix="arinv-mlflow-spool-"))
        dst = self._spool_dir / str(next(self._seq)) / src.name
        try:
            dst.parent.mkdir(parents=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
        except OSError as e:
            _log.warning("RunLogger: cannot copy artifact %s for upload (%s); skipped", src, e)
            shutil.rmtree(dst.parent, ignore_errors=True)
            return
        if not self._put("artifact", (dst, artifact_path)):
            shutil.rmtree(dst.parent, ignore_errors=True)

    def set_tags(self, tags: dict) -> None:
        clean = [RunTag(str(k), str(v)[:_MAX_TAG_VALUE]) for k, v in tags.items()]
        if clean:
            self._put("tags", clean)

    def flush(self, timeout: float = 120.0) -> bool:
        """True when everything queued so far was delivered (none refused, none dropped at the
        bound) within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._last_seq
            self._retry_now = True
            self._cond.notify_all()
            # Items stay in seq order (coalesced metrics take the newest seq of what they hold).
            def waiting():
                return bool(self._items) and self._items[0][2] <= target

            while waiting() and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return (not waiting() and self.rejected == 0 and self.dropped_metrics == 0
                    and self.dropped_items == 0)

    def close(self, status: str | None = None, timeout: float = 120.0) -> bool:
        """Flush, optionally mark the run ``status`` (FINISHED / FAILED / KILLED), stop the
        thread. False (and a warning with the number of undelivered items) on timeout."""
        if status is not None and status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"close(status={status!r}): use FINISHED, FAILED, KILLED or None")
        if self._closed:
            return self.flush(0)
        if status is not None:
            self._put("terminate", status)
        self._closed = True
        ok = self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            if self._dropped_unwarned:
                self._warn_dropped(force=True)
        if self.pending:
            _log.warning("RunLogger: %d item(s) for run %s not delivered to %s within %.0f s; "
                         "given up (artifact copies left in %s)", self.pending, self.run_id,
                         self.tracking_uri, timeout, self._spool_dir)
        else:
            self._thread.join(timeout=5)
            if self._spool_dir is not None:
                shutil.rmtree(self._spool_dir, ignore_errors=True)
        return ok

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunLogger for run {self.run_id} is closed; create a new one")

    def _put(self, kind: str, payload) -> bool:
        """Queue an item; False when it was dropped at the bound (see the class docstring)."""
        self._check_open()
        with self._cond:
            try:
                if kind == "metrics":
                    if self._units + len(payload) > self.max_pending:
                        self._coalesce(payload)
                    else:
                        self._append(kind, payload)
                    return True
                if kind != "terminate" and not self._wait_for_room():
                    self.dropped_items += 1
                    _log.warning("RunLogger: %d item(s) pending for run %s (max_pending=%d) and "
                                 "no room after %g s; dropped %s", self.pending, self.run_id,
                                 self.max_pending, self.put_timeout, kind)
                    return False
                self._append(kind, payload)
                return True
            finally:
                self._cond.notify_all()

    def _append(self, kind: str, payload, seq: int | None = None) -> None:
        if seq is None:
            seq = self._last_seq = next(self._order)
        self._items.append((kind, payload, seq))
        self._units += _units(kind, payload)

    def _popleft(self) -> None:
        kind, payload, _ = self._items.popleft()
        self._units -= _units(kind, payload)

    def _wait_for_room(self) -> bool:
        """Room for one non-metric item: drop old metric points, else wait for delivery."""
        deadline = time.monotonic() + self.put_timeout
        while self._units + 1 > self.max_pending:
            if self._coalesce(None, room=1):
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self._stop:
                return False
            self._cond.wait(left)
        return True

    def _coalesce(self, batch: list | None, room: int = 0) -> bool:
        """Merge the queued metric points (past the head being delivered) with ``batch`` and
        keep what fits in the bound less ``room`` units. False when nothing could be freed."""
        start = max(self._inflight, self._unmerged)
        head = list(itertools.islice(self._items, 0, start))
        rest = list(itertools.islice(self._items, start, None))
        others = [item for item in rest if item[0] != "metrics"]
        metric_items = [item for item in rest if item[0] == "metrics"]
        if batch is None and not metric_items:
            return False
        latest: dict = {}                # (key, step) -> Metric, in order of the latest value
        for m in itertools.chain((m for item in metric_items for m in item[1]), batch or ()):
            latest.pop((m.key, m.step), None)
            latest[(m.key, m.step)] = m
        points = list(latest.values())
        budget = self.max_pending - room - sum(_units(*item[:2]) for item in head + others)
        if batch is None and budget < 0:
            return False                 # non-metric items fill the queue: dropping cannot help
        dropped = 0
        if len(points) > budget:
            keep = _newest_per_key(points, max(0, budget - budget // 8))
            dropped = len(points) - len(keep)
            points = keep
        # The merged points go after the other items, with a seq no older than theirs: the
        # queue stays in seq order, so flush never returns while an older point is queued.
        if batch is not None:
            seq = self._last_seq = next(self._order)
        else:
            seq = max(item[2] for item in rest)
        self._items.clear()
        self._units = 0
        for item in head + others:
            self._append(*item)
        for i in range(0, len(points), _MAX_METRICS_PER_BATCH):
            self._append("metrics", points[i:i + _MAX_METRICS_PER_BATCH], seq)
        if dropped:
            self.dropped_metrics += dropped
            self._dropped_unwarned += dropped
            self._warn_dropped()
        return dropped > 0 or self._units + room <= self.max_pending

    def _warn_dropped(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_drop_warning:
            _log.warning("RunLogger: the queue for run %s (tracking at %s) reached "
                         "max_pending=%d; dropped the %d oldest metric point(s) (%d in all so "
                         "far), kept the newest steps of every metric", self.run_id,
                         self.tracking_uri, self.max_pending, self._dropped_unwarned,
                         self.dropped_metrics)
            self._dropped_unwarned = 0
            self._next_drop_warning = now + 60

    # -- delivery thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                items = self._head()
                self._inflight = len(items)
            outcome = self._attempt(items)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()  # a producer waiting for room may now coalesce the head
                if outcome == "split":
                    self._unmerged = len(items)
                    continue
                if outcome != "retry":
                    for _ in items:
                        self._popleft()
                    self._unmerged = max(0, self._unmerged - len(items))
                    self._cond.notify_all()
                    continue
                self._retry_now = False
                self._cond.wait_for(lambda: self._retry_now or self._stop, self.retry_interval)

    def _head(self) -> list:
        """The first item; consecutive metric items are merged into one request."""
        items = [self._items[0]]
        if items[0][0] == "metrics" and not self._unmerged:
            n = len(items[0][1])
            for item in itertools.islice(self._items, 1, None):
                if item[0] != "metrics" or n + len(item[1]) > _MAX_METRICS_PER_BATCH:
                    break
                items.append(item)
                n += len(item[1])
        return items

    def _attempt(self, items: list) -> str:
        """'done', 'rejected' (dropped), 'split' (resend one by one) or 'retry'."""
        try:
            self._deliver(items)
        except Exception as e:  # noqa: BLE001 - nothing from tracking may reach the training loop
            if _is_rejection(e) and len(items) > 1:
                return "split"  # drop only the item the server refuses
            if _is_rejection(e):
                self.rejected += len(items)
                _log.warning("RunLogger: run %s at %s refused %s (%s); dropped", self.run_id,
                             self.tracking_uri, items[0][0], _short(e))
                return "rejected"
            self._note_outage(e)
            return "retry"
        if self._down_since is not None:
            _log.warning("RunLogger: %s reachable again after %.0f s; delivering %d pending "
                         "item(s)", self.tracking_uri, time.monotonic() - self._down_since,
                         self.pending)
            self._down_since = None
        return "done"

    def _note_outage(self, e: Exception) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._next_warning = now, now
        if now >= self._next_warning:
            _log.warning("RunLogger: MLflow at %s %s for %.0f s (%s); %d item(s) pending for run "
                         "%s, retrying every %g s; training goes on", self.tracking_uri,
                         "unreachable" if is_unreachable(e) else "failing", now - self._down_since,
                         _short(e, 200), self.pending, self.run_id, self.retry_interval)
            self._next_warning = now + 60

    def _deliver(self, items: list) -> None:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        kind, payload, _ = items[0]
        c, run_id = self._client, self.run_id
        if kind == "metrics":
            c.log_batch(run_id, metrics=[m for item in items for m in item[1]])
        elif kind == "params":
            self._deliver_params(payload)
        elif kind == "tags":
            for i in range(0, len(payload), _MAX_PARAMS_TAGS_PER_BATCH):
                c.log_batch(run_id, tags=payload[i:i + _MAX_PARAMS_TAGS_PER_BATCH])
        elif kind == "artifact":
            local, artifact_path = payload
            c.log_artifact(run_id, str(local), artifact_path)
            shutil.rmtree(local.parent, ignore_errors=True)
        elif kind == "terminate":
            c.set_terminated(run_id, payload)

    def _deliver_params(self, params: dict) -> None:
        if self._params is None:
            self._params = dict(self._client.get_run(self.run_id).data.params)
        new = {}
        for k, v in params.items():
            old = self._params.get(k)
            if old is None:
                new[k] = v
            elif old != v:
                _log.warning("RunLogger: param %r is already %r on run %s, not %r; params are "
                             "write-once, kept the old value", k, old, self.run_id, v)
        keys = list(new)
        for i in range(0, len(keys), _MAX_PARAMS_TAGS_PER_BATCH):
            chunk = [Param(k, new[k]) for k in keys[i:i + _MAX_PARAMS_TAGS_PER_BATCH]]
            self._client.log_batch(self.run_id, params=chunk)
            self._params.update((p.key, p.value) for p in chunk)


def _units(kind: str, payload) -> int:
    """What an item counts against ``RunLogger.max_pending``: its points, or 1."""
    return len(payload) if kind == "metrics" else 1


def _newest_per_key(points: list, limit: int) -> list:
    """At most ``limit`` of ``points`` (Metrics, distinct (key, step)), in their order: each
    key keeps its newest N steps, N the largest that fits (keys with fewer keep all); when not
    even one step per key fits, the ``limit`` newest points overall."""
    if limit <= 0:
        return []
    if len(points) <= limit:
        return points
    by_key: dict = {}
    for i, m in enumerate(points):
        by_key.setdefault(m.key, []).append((m.step, i))
    lo, hi = 0, max(len(v) for v in by_key.values())
    while lo < hi:                       # the largest N with sum(min(count, N)) <= limit
        mid = (lo + hi + 1) // 2
        if sum(min(len(v), mid) for v in by_key.values()) <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        keep = sorted(range(len(points)), key=lambda i: (points[i].step, i))[-limit:]
    else:
        keep = [i for v in by_key.values() for _, i in sorted(v)[-lo:]]
    return [points[i] for i in sorted(keep)]


def _as_float(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, numbers.Real):
        return float(v)
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):  # numpy / torch scalars
        item = v.item()
        return float(item) if isinstance(item, numbers.Real) and not isinstance(item, bool) else None
    return None


def _is_rejection(e: Exception) -> bool:
    import requests

    if is_unreachable(e):
        return False
    if isinstance(e, MlflowException):
        return e.error_code in _REJECTED
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return 400 <= e.response.status_code < 500 and e.response.status_code not in (408, 429)
    return False


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
