"""Which checkpoint a restarted Ray Train worker resumes from (``pipelines.trainer.stored_after``):
a newer, whole checkpoint in the run's storage beats the one Ray Train recorded (the process
died between persisting it and the controller recording it), a cut-short one never does."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ray")

from arinv.checkpoint import STATE, CheckpointError, save_checkpoint  # noqa: E402
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


def test_a_relaunch_passes_over_a_cut_short_newest_checkpoint(tmp_path, capsys):
    """The driver was killed while Ray persisted its newest checkpoint: the relaunch says so and
    resumes from the whole one before it; with no whole one left it refuses, naming the file."""
    from arinv.config import EncoderTrainConfig, load_config, to_dict
    from arinv.train.tasks import EncoderTask
    from pipelines.trainer import check_resume

    task = EncoderTask(load_config(EncoderTrainConfig, "tiny-sample-standard", ["optim.epochs=3"]))
    run = tmp_path / "store" / "run"
    folders = []
    for epoch, stamp in ((1, "10-00-00"), (2, "10-00-09")):
        folder = run / f"checkpoint_2026-12-04_{stamp}.000001"
        folder.mkdir(parents=True)
        save_checkpoint(folder / STATE, kind="encoder", arch=task.arch,
                        modules={"model": torch.nn.Linear(2, 2)}, config=to_dict(task.cfg),
                        progress={"epoch": epoch, "history": []})
        folders.append(folder)
    assert check_resume(str(tmp_path / "store"), "run", task=task) == (str(folders[1]), 2, False)
    data = (folders[1] / STATE).read_bytes()
    (folders[1] / STATE).write_bytes(data[: len(data) // 2])
    assert check_resume(str(tmp_path / "store"), "run", task=task) == (str(folders[0]), 1, False)
    assert f"passing over {folders[1] / STATE}" in capsys.readouterr().out
    (folders[0] / STATE).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"checkpoint_2026-12-04_10-00-00.000001/state\.pt: "
                       r"cannot be read .*\(remove the run folder"):
        check_resume(str(tmp_path / "store"), "run", task=task)
