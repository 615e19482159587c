"""RunLogger's bounded queue: a long outage cannot grow memory without limit.

Against a real unreachable tracking URI (a loopback port nothing listens on) and a real sqlite
store; no mocks. At the bound, metric points are coalesced (latest value per (key, step), then
each key's newest steps), params / tags / artifacts are never dropped for metrics' sake, and a
non-metric item that finds no room waits up to ``put_timeout`` and is then dropped.
"""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from pipelines.tracking import RunLogger


@pytest.fixture(autouse=True)
def _short_mlflow_http(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _dead_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"   # closed again: nothing listens


def _queued(log: RunLogger) -> dict:
    """{kind: [payloads]}, and {key: {step: value}} of the queued metric points."""
    with log._cond:
        items = list(log._items)
    out: dict = {"metrics": {}}
    for kind, payload, _ in items:
        if kind == "metrics":
            for m in payload:
                assert m.step not in out["metrics"].setdefault(m.key, {}), "duplicate point"
                out["metrics"][m.key][m.step] = m.value
        else:
            out.setdefault(kind, []).append(payload)
    return out


def test_outage_keeps_the_queue_bounded_and_the_newest_points(caplog):
    log = RunLogger(_dead_uri(), "0" * 32, retry_interval=0.2, max_pending=20)
    log.log_params({"optim.lr": 0.1})
    log.set_tags({"phase": "outage"})
    t0, slowest = time.monotonic(), 0.0
    for step in range(302):
        t = time.monotonic()
        log.log_metrics({"loss": float(step), "acc": step / 1000}, step=step)
        if step == 299:                                 # a newer value for a queued (key, step);
            log.log_metrics({"loss": -1.0}, step=299)   # the next two steps coalesce the queue
        slowest = max(slowest, time.monotonic() - t)
        assert log.pending <= 20 and log._units <= 20
    assert slowest < 1.0 and time.monotonic() - t0 < 10

    q = _queued(log)
    assert q["params"] == [{"optim.lr": "0.1"}]     # never dropped for metrics
    assert [[(t.key, t.value) for t in tags] for tags in q["tags"]] == [[("phase", "outage")]]
    loss, acc = q["metrics"]["loss"], q["metrics"]["acc"]
    assert loss[299] == -1.0 and acc[299] == 0.299  # the latest value, once
    for key_points in (loss, acc):                   # each key: its newest steps
        assert all(s in key_points for s in range(296, 302))
    assert sum(len(v) for v in q["metrics"].values()) <= 18
    assert log.dropped_metrics == 604 - sum(len(v) for v in q["metrics"].values())
    assert "reached max_pending=20" in caplog.text and "oldest metric point" in caplog.text
    assert len([r for r in caplog.records if "max_pending" in r.getMessage()]) == 1  # 1 / min
    assert log.close(timeout=0.5) is False


def test_non_metric_items_wait_for_room_then_are_dropped(tmp_path, caplog):
    log = RunLogger(_dead_uri(), "0" * 32, retry_interval=0.2, max_pending=5, put_timeout=0.5)
    for step in range(10):
        log.log_metrics({"loss": float(step)}, step=step)
    t0 = time.monotonic()
    for i in range(5):                               # old metric points make room at once
        log.set_tags({f"tag{i}": i})
    assert time.monotonic() - t0 < 2    # (a put_timeout of 0.5 s each would drop some)
    q = _queued(log)
    assert len(q["tags"]) == 5 and log.pending == 5 and log.dropped_items == 0
    assert q["metrics"] == {}

    log.log_metrics({"loss": 99.0}, step=99)          # metrics never wait: dropped at once
    assert log.pending == 5 and log.dropped_metrics >= 10

    artifact = tmp_path / "grid.png"
    artifact.write_bytes(b"png")
    t0 = time.monotonic()
    log.log_params({"a": 1})                         # only non-metric items queued: waits,
    log.log_artifact(artifact, "images")             # then drops
    waited = time.monotonic() - t0
    assert 0.9 <= waited < 5
    assert log.dropped_items == 2 and log.pending == 5
    assert "no room after 0.5 s; dropped params" in caplog.text
    assert "dropped artifact" in caplog.text
    assert not any(log._spool_dir.iterdir())          # the dropped artifact's copy is gone
    assert [t[0].key for t in _queued(log)["tags"]] == [f"tag{i}" for i in range(5)]
    assert log.close("FAILED", timeout=0.5) is False  # the final status goes past the bound
    assert "item(s) for run" in caplog.text


def test_what_was_kept_is_delivered_once_the_store_answers(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("bound", (tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    log = RunLogger(uri, run_id, retry_interval=0.2, max_pending=20, put_timeout=10)
    with log._cond:        # the delivery thread cannot take anything while this is held
        log.log_params({"optim.lr": 0.1, "name": "bound"})
        for step in range(202):
            log.log_metrics({"loss": float(step), "acc": step / 1000}, step=step)
            if step == 199:
                log.log_metrics({"loss": -1.0}, step=199)
        assert log.pending <= 20 and log._units <= 20 and log.dropped_metrics > 0
        kept = _queued(log)["metrics"]
        assert kept["loss"][199] == -1.0 and 150 not in kept["loss"]
    assert log.flush(timeout=15) is False      # everything delivered, but points were dropped
    assert log.pending == 0 and log._units == 0

    with log._cond:
        for i in range(30):   # more tags than the bound: each waits (releasing the lock) until
            log.set_tags({f"tag{i}": str(i)})  # the thread has delivered enough to make room
            assert log.pending <= 20
    assert log.dropped_items == 0
    assert log.close("FINISHED", timeout=15) is False

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"optim.lr": "0.1", "name": "bound"}
    assert {k: v for k, v in run.data.tags.items() if k.startswith("tag")} == {
        f"tag{i}": str(i) for i in range(30)}
    for key in ("loss", "acc"):
        history = {(m.step, m.value) for m in client.get_metric_history(run_id, key)}
        assert history == set(kept[key].items()), key
    assert run.data.metrics["loss"] == 201.0 and run.data.metrics["acc"] == 0.201
