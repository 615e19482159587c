"""The checkpoint file: model / optimiser / schedule states, progress, RNG states, the config,
and the architecture they belong to, so that a checkpoint of another architecture is refused.

Files are read with ``torch.load(weights_only=True)``: a checkpoint holds only tensors and plain
data (numbers, strings, lists, dicts), so a file that carries code (a pickled object whose
loading would run it) is refused, whoever wrote it. A checkpoint directory (what both training
backends keep per epoch) is ``state.pt`` plus the run's result files (reports, grids).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "arinv-checkpoint/1"
STATE = "state.pt"  # the checkpoint file inside a checkpoint directory


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for this run; the message says which file and why."""


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, kind: str, arch: dict, modules: dict[str, Any],
                    progress: dict, config: dict | None = None) -> Path:
    """Atomically write ``modules`` (name -> object with ``state_dict``) and metadata."""
    path = Path(path)
    payload = {
        "format": FORMAT, "kind": kind, "arch": arch, "config": config or {},
        "progress": progress, "rng": rng_state(),
        "state": {k: unwrap(m).state_dict() for k, m in modules.items()},
    }
    _write(payload, path)
    return path


def _write(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_payload(path: str | Path, source=None, map_location="cpu") -> dict:
    """The payload of an arinv checkpoint file (``source``: its bytes as a file object, when
    they do not come from ``path``, which then only names it in errors)."""
    path = Path(path)
    if source is None and not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path if source is None else source, map_location=map_location,
                             weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path}: refused: the file holds pickled Python objects, not only tensors and "
                "plain data, and loading them could run code. Only load checkpoints written by "
                "arinv (or convert this one where you trust it)") from None
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({e}); delete it to "
                              "start over or point to another file") from None
    except Exception as e:  # truncated or foreign files
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: "
                              f"{e}); delete it to start over or point to another file") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an arinv checkpoint (expected format {FORMAT})")
    return payload


def read_checkpoint(path: str | Path, kind: str) -> dict:
    """The payload of an arinv ``kind`` checkpoint file, for rebuilding its model."""
    payload = read_payload(path)
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {payload.get('kind')} checkpoint, not an arinv "
                              f"{kind} checkpoint")
    return payload


def load_checkpoint(path: str | Path, *, kind: str, arch: dict, modules: dict[str, Any],
                    map_location="cpu", restore_rng: bool = True) -> dict:
    """Load into ``modules`` after checking kind and architecture; returns the payload."""
    payload = read_payload(path, map_location=map_location)
    if payload["kind"] != kind:
        raise CheckpointError(f"{path}: holds a {payload['kind']} checkpoint, this run needs a {kind}")
    check_arch(path, payload["arch"], arch)
    missing = [k for k in modules if k not in payload["state"]]
    if missing:
        raise CheckpointError(f"{path}: has no state for {missing}")
    for k, m in modules.items():
        unwrap(m).load_state_dict(payload["state"][k])
    if restore_rng and "rng" in payload:
        set_rng_state(payload["rng"])
    return payload


def check_arch(path, found: dict, expected: dict) -> None:
    if found == expected:
        return
    diffs = [f"{k}: checkpoint {found.get(k)!r} vs run {expected.get(k)!r}"
             for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]
    raise CheckpointError(
        f"{path}: was saved from a different architecture ({'; '.join(diffs)}). "
        "Use a checkpoint of this architecture, or a new run name / workdir to start fresh."
    )


def export_weights(src: str | Path, dst: str | Path, keep: tuple[str, ...]) -> Path:
    """A slim copy of checkpoint ``src`` holding only the ``keep`` states (e.g. the model's
    weights, no optimiser) with the same kind / arch / config, for handing to consumers."""
    payload = read_payload(src)
    missing = [k for k in keep if k not in payload["state"]]
    if missing:
        raise CheckpointError(f"{src}: has no state for {missing}")
    payload["state"] = {k: payload["state"][k] for k in keep}
    payload.pop("rng", None)
    _write(payload, Path(dst))
    return Path(dst)


def unwrap(m):
    return getattr(m, "module", m)  # DDP-wrapped models store the real one in .module
