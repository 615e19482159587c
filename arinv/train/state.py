"""Resuming a run from its last checkpoint: what may change between the run that wrote it and
the run that resumes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arinv.checkpoint import CheckpointError, load_checkpoint
from arinv.config import flatten, stored

# Config fields that may differ between a checkpoint's run and the run resuming it.
RESUMABLE_CHANGES = ("optim.epochs", "eval.", "data.shards", "data.loader", "data.on_corrupt",
                     "runtime.device", "runtime.deterministic", "scaling.", "name")


def resume(path: Path, *, kind: str, cls, arch: dict, modules: dict[str, Any], config: dict,
           map_location="cpu") -> tuple[int, list]:
    """(next epoch, history) from the run's checkpoint file ``path``, loaded into ``modules``;
    (0, []) when there is none. ``cls`` is the run's config class, ``config`` its flat config."""
    if not path.exists():
        return 0, []
    payload = load_checkpoint(path, kind=kind, arch=arch, modules=modules,
                              map_location=map_location)
    check_resumable(path, flatten(stored(cls, payload["config"])), config)
    return payload["progress"]["epoch"], payload["progress"].get("history", [])


def check_resumable(path, saved: dict, current: dict) -> None:
    diffs = [k for k in sorted(set(saved) | set(current))
             if saved.get(k) != current.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
        raise CheckpointError(f"{path}: belongs to a run with another config ({detail}). "
                              "Resume with the same preset, or use a new workdir.")
