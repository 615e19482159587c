"""Checkpoint contents: weights, optimiser, scheduler, progress and RNG states, and the
architecture they belong to, so that a checkpoint of another architecture is refused."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arinv.config import flatten

FORMAT = "arinv-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for this run; the message says which file and why."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, kind: str, arch: dict, modules: dict[str, Any],
                    progress: dict[str, int], config: dict | None = None) -> Path:
    """Atomically write ``modules`` (name -> object with ``state_dict``) and metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "kind": kind, "arch": arch, "config": config or {},
        "progress": progress, "rng": rng_state(),
        "state": {k: _unwrap(m).state_dict() for k, m in modules.items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, *, kind: str, arch: dict, modules: dict[str, Any],
                    map_location="cpu", restore_rng: bool = True) -> dict:
    """Load into ``modules`` after checking kind and architecture; returns the payload."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}); "
                              "delete it to start over or point to another file") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an arinv checkpoint (expected format {FORMAT})")
    if payload["kind"] != kind:
        raise CheckpointError(f"{path}: holds a {payload['kind']} checkpoint, this run needs a {kind}")
    check_arch(path, payload["arch"], arch)
    missing = [k for k in modules if k not in payload["state"]]
    if missing:
        raise CheckpointError(f"{path}: has no state for {missing}")
    for k, m in modules.items():
        _unwrap(m).load_state_dict(payload["state"][k])
    if restore_rng and "rng" in payload:
        set_rng_state(payload["rng"])
    return payload


# Config fields that may differ between a checkpoint's run and the run resuming it.
RESUMABLE_CHANGES = ("optim.epochs", "eval.", "eval_every", "eval_images", "ri_steps",
                     "data.num_workers", "data.shards", "data.loader", "runtime.device",
                     "scaling.", "name")


def resume(path: Path, *, kind: str, arch: dict, modules: dict[str, Any], config: dict,
           map_location="cpu") -> tuple[int, list]:
    """(next epoch, history) from the run's last checkpoint at ``path``, loaded into
    ``modules``; (0, []) when there is none. ``config`` is the run's flat config."""
    if not path.exists():
        return 0, []
    payload = load_checkpoint(path, kind=kind, arch=arch, modules=modules,
                              map_location=map_location)
    check_resumable(path, flatten(payload["config"]), config)
    return payload["progress"]["epoch"], payload["progress"].get("history", [])


def check_resumable(path, saved: dict, current: dict) -> None:
    diffs = [k for k in sorted(set(saved) | set(current))
             if saved.get(k) != current.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs)
        raise CheckpointError(f"{path}: belongs to a run with another config ({detail}). "
                              "Resume with the same preset, or use a new workdir.")


def check_arch(path, found: dict, expected: dict) -> None:
    if found == expected:
        return
    diffs = [f"{k}: checkpoint {found.get(k)!r} vs run {expected.get(k)!r}"
             for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]
    raise CheckpointError(
        f"{path}: was saved from a different architecture ({'; '.join(diffs)}). "
        "Use a checkpoint of this architecture, or a new run name / workdir to start fresh."
    )


def read_checkpoint(path: str | Path, kind: str) -> dict:
    """The payload of an arinv ``kind`` checkpoint file, for rebuilding its model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        raise CheckpointError(f"{path}: not an arinv {kind} checkpoint")
    return payload


def export_weights(src: str | Path, dst: str | Path, keep: tuple[str, ...]) -> Path:
    """A slim copy of checkpoint ``src`` holding only the ``keep`` states (e.g. the model's
    weights, no optimiser) with the same kind / arch / config, for handing to consumers."""
    src, dst = Path(src), Path(dst)
    payload = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{src}: not an arinv checkpoint (expected format {FORMAT})")
    missing = [k for k in keep if k not in payload["state"]]
    if missing:
        raise CheckpointError(f"{src}: has no state for {missing}")
    payload["state"] = {k: payload["state"][k] for k in keep}
    payload.pop("rng", None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, dst)
    return dst


def _unwrap(m):
    return getattr(m, "module", m)  # DDP-wrapped models store the real one in .module
