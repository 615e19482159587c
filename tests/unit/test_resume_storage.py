"""Which checkpoint a restarted Ray Train worker resumes from (``pipelines.trainer.stored_after``):
a newer, whole checkpoint in the run's storage beats the one Ray Train recorded (the process
died between persisting it and the controller recording it), a cut-short one never does."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ray")

from arinv.checkpoint import STATE, save_checkpoint  # noqa: E402
from pipelines.trainer import stored_after  # noqa: E402


def _ckpt(folder, epoch: int):
    folder.mkdir(parents=True)
    save_checkpoint(folder / STATE, kind="encoder", arch={"name": "x"},
                    modules={"model": torch.nn.Linear(2, 2)}, config={},
                    progress={"epoch": epoch, "history": []})
    (folder / "report.json").write_text("{}")
    return folder


def test_a_newer_whole_checkpoint_in_storage_is_resumed_from(tmp_path):
    run = tmp_path / "store" / "run"
    old = _ckpt(run / "checkpoint_2026-12-04_10-00-00.000001", 1)
    new = _ckpt(run / "checkpoint_2026-12-04_10-00-09.000001", 2)
    assert stored_after(str(tmp_path / "store"), "run", str(old)) == str(new)
    assert stored_after(str(tmp_path / "store"), "run", None) == str(new)  # none recorded yet
    assert stored_after(str(tmp_path / "store"), "run", str(new)) is None  # Ray's is the newest
    assert stored_after(None, None, str(old)) is None
    assert stored_after(str(tmp_path / "store"), "other", None) is None


def test_a_cut_short_checkpoint_is_not_resumed_from(tmp_path):
    run = tmp_path / "store" / "run"
    old = _ckpt(run / "checkpoint_2026-12-04_10-00-00.000001", 1)
    new = _ckpt(run / "checkpoint_2026-12-04_10-00-09.000001", 2)
    data = (new / STATE).read_bytes()
    (new / STATE).write_bytes(data[: len(data) // 2])  # persisted half-way when the process died
    assert stored_after(str(tmp_path / "store"), "run", str(old)) is None
