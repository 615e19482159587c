"""Published classifiers as arinv encoders: weights from another code base (torchvision's
AlexNet, the MadryLab robustness library's robust models) checked against a registered encoder
and written as an arinv encoder checkpoint, so robust encoders need not be trained again.

Layouts understood:

* ``torchvision``: a bare state dict whose keys are the encoder's own (``features.0.weight``,
  ``classifier.6.weight``; ``conv1.weight``, ``linear.weight`` for the CIFAR ResNets).
* ``robustness``: ``{"model" (or "state_dict"): {...}, "epoch": ...}`` whose state dict holds
  the network under ``module.model.``, the attacker's copy of it under
  ``module.attacker.model.`` and the input normaliser's ``new_mean`` / ``new_std`` (3 x 1 x 1)
  under ``module.normalizer.`` and ``module.attacker.normalize.``. The normaliser must equal
  the encoder's own (normalisation lives inside arinv encoders). The library's ImageNet
  models split the classifier's last linear layer off as ``last_layer`` (AlexNet: the same
  layers as torchvision's, ``classifier.6`` there); it is renamed to the encoder's head.

Files are read with ``torch.load(weights_only=True)``: a file with pickled objects is refused.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path

import torch

from arinv.checkpoint import CheckpointError, save_checkpoint
from arinv.config import (
    AttackConfig,
    ConfigError,
    EncoderConfig,
    EncoderTrainConfig,
    to_dict,
    validate,
)
from arinv.models import create_encoder, list_encoders

LAYOUTS = ("torchvision", "robustness")
NORM_TOLERANCE = 1e-4

_MODEL, _ATTACKER = "module.model.", "module.attacker.model."
_NORMALIZERS = ("module.normalizer.", "module.attacker.normalize.")
_LAST_LAYER = "last_layer."  # the robustness library's name for an ImageNet model's head
_SHOWN = 3  # offending keys named in an error

_LAYOUT_HELP = ("understood layouts: torchvision (a bare state dict with the encoder's keys, "
                "e.g. features.0.weight), robustness (MadryLab robustness library: "
                "{'model' or 'state_dict': {'module.model.*', 'module.attacker.model.*', "
                "'module.normalizer.new_mean', 'module.normalizer.new_std', ...}, 'epoch': N})")


def import_state_dict(path: str | Path, encoder_name: str, *, num_classes: int | None = None,
                      layout: str = "auto") -> tuple[torch.nn.Module, dict]:
    """(encoder in eval mode, info) from a published checkpoint ``path`` loaded into the
    registered encoder ``encoder_name`` (strictly: every key, every shape). ``num_classes``
    defaults to the head's output count; ``layout`` is "auto" or one of :data:`LAYOUTS`.
    ``info``: layout, encoder, num_classes, sha256, file, and the robustness checkpoint's epoch,
    normaliser and whether its attacker copy is identical to the model."""
    path = Path(path)
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"layout: {layout!r} is not one of auto, {', '.join(LAYOUTS)}")
    if encoder_name not in list_encoders():
        raise ConfigError(f"encoder: unknown encoder {encoder_name!r}; registered: "
                          f"{list_encoders()}")
    digest = sha256_file(path)
    obj = _read(path)
    found = detect_layout(obj)
    if layout != "auto" and found != layout:
        what = f"looks like the {found} layout" if found else _describe(obj)
        raise CheckpointError(f"{path}: not a {layout} checkpoint: it {what}; {_LAYOUT_HELP}")
    if found is None:
        raise CheckpointError(f"{path}: unknown checkpoint layout: it {_describe(obj)}; "
                              f"{_LAYOUT_HELP}")
    info = {"layout": found, "encoder": encoder_name, "sha256": digest, "file": path.name}
    if found == "robustness":
        sd, norm, extra = _split_robustness(path, obj)
        info.update(extra)
        head = _head(encoder_name)[0].rsplit(".", 1)[0] + "."
        if _LAST_LAYER + "weight" in sd and head + "weight" not in sd:
            sd = {head + k[len(_LAST_LAYER):] if k.startswith(_LAST_LAYER) else k: v
                  for k, v in sd.items()}
            info["renamed"] = {_LAST_LAYER: head}
    else:
        sd, norm = dict(obj), None
    n = _num_classes(path, sd, encoder_name, num_classes)
    model = create_encoder(encoder_name, num_classes=n)
    _check_fit(path, model, sd)  # the architecture first: a wrong one explains the rest
    if norm is not None:
        _check_normalizer(path, norm, model)
        info["normalizer"] = {k: [round(float(x), 6) for x in v.flatten()]
                              for k, v in norm["module.normalizer."].items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # checked by _check_fit; kept so that nothing loads half
        raise CheckpointError(f"{path}: does not load into {encoder_name}: "
                              f"{_first_line(e)}") from None
    info["num_classes"] = n
    return model.eval(), info


def write_encoder_checkpoint(model: torch.nn.Module, dest: str | Path, *, name: str,
                             attack: AttackConfig | None = None,
                             source: dict | None = None) -> Path:
    """An arinv encoder checkpoint of ``model`` (read back by ``load_encoder``): its config
    says encoder name / num_classes and ``attack`` (the threat model it is robust to, as
    declared by whoever imports it; None: a standard encoder); progress is epoch 0 with no
    history, plus ``source`` (e.g. the ``info`` of :func:`import_state_dict`) as provenance."""
    cfg = EncoderTrainConfig(name=name, attack=attack,
                             encoder=EncoderConfig(name=model.arch["name"],
                                                   num_classes=model.arch["num_classes"]))
    validate(cfg)
    progress = {"epoch": 0, "history": []}
    if source:
        progress["imported_from"] = _plain(source)
    return save_checkpoint(dest, kind="encoder", arch=model.arch, modules={"model": model},
                           progress=progress, config=to_dict(cfg))


def sha256_file(path: Path) -> str:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detect_layout(obj) -> str | None:
    """"robustness", "torchvision" or None (not understood)."""
    if _robust_state(obj) is not None:
        return "robustness"
    if _is_state_dict(obj) and not any(k.startswith("module.") for k in obj):
        return "torchvision"
    return None


# ----------------------------------------------------------------------------- reading


def _read(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Unsupported global" not in str(e):
            raise CheckpointError(f"{path}: cannot be read as a PyTorch file ({e})") from None
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (e.g. {m.group(1)})" if m else ""
        raise CheckpointError(
            f"{path}: refused: the file holds pickled Python objects{what}, not only tensors, "
            "and loading them could run code. Where you trust the file, load it with the code "
            "that wrote it and re-save only the weights: torch.save({'model': ckpt['model']}, "
            "'weights.pt') for a robustness library checkpoint, torch.save(model.state_dict(), "
            "'weights.pt') otherwise; then import weights.pt") from None
    except Exception as e:  # noqa: BLE001  (truncated, empty, foreign: each fails its own way)
        raise CheckpointError(f"{path}: cannot be read as a PyTorch file ({type(e).__name__}: "
                              f"{_first_line(e)}); is the download complete?") from None


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _robust_state(obj) -> dict | None:
    """The state dict of a robustness checkpoint (wrapped in "model" / "state_dict", or bare)."""
    candidates = [obj] + ([obj.get("model"), obj.get("state_dict")] if isinstance(obj, dict)
                          else [])
    for c in candidates:
        if _is_state_dict(c) and any(k.startswith(_MODEL) for k in c):
            return c
    return None


def _describe(obj) -> str:
    if _is_state_dict(obj):
        return f"is a state dict with keys like {_first(obj)}"
    if isinstance(obj, dict):
        inner = {k: v for k, v in obj.items() if _is_state_dict(v)}
        found = f"; {next(iter(inner))!r} holds keys like {_first(next(iter(inner.values())))}" \
            if inner else ""
        return f"is a dict with keys {_first(obj, 6)}{found}"
    return f"holds a {type(obj).__name__}, not a dict of tensors"


def _split_robustness(path: Path, obj) -> tuple[dict, dict, dict]:
    """(network state dict without prefixes, normalisers by prefix, info)."""
    full = _robust_state(obj)
    model = {k[len(_MODEL):]: v for k, v in full.items() if k.startswith(_MODEL)}
    attacker = {k[len(_ATTACKER):]: v for k, v in full.items() if k.startswith(_ATTACKER)}
    norm = {p: {k[len(p):]: v for k, v in full.items() if k.startswith(p)} for p in _NORMALIZERS}
    known = (_MODEL, _ATTACKER, *_NORMALIZERS)
    other = [k for k in full if not k.startswith(known)]
    if other:
        raise CheckpointError(f"{path}: robustness layout with unexpected entries "
                              f"{_first(other)} (besides {', '.join(known)})")
    if not {"new_mean", "new_std"} <= set(norm["module.normalizer."]):
        raise CheckpointError(f"{path}: robustness layout without module.normalizer.new_mean / "
                              "new_std: the input statistics the weights expect are unknown")
    info: dict = {"attacker_copy": "absent"}
    if attacker:
        if set(attacker) != set(model):
            diff = sorted(set(attacker) ^ set(model))
            raise CheckpointError(f"{path}: the attacker's copy of the network "
                                  f"({_ATTACKER}*) has other keys than the model ({_MODEL}*): "
                                  f"{_first(diff)}; the file is damaged or not a robustness "
                                  "checkpoint")
        same = all(torch.equal(attacker[k], v) for k, v in model.items())
        info["attacker_copy"] = "identical" if same else "differs"
        if not same:
            warnings.warn(f"{path}: the attacker's copy of the network differs from the model; "
                          f"importing the model ({_MODEL}*)", stacklevel=3)
    if isinstance(obj, dict) and "epoch" in obj:
        epoch = obj["epoch"]
        if isinstance(epoch, torch.Tensor) and epoch.numel() == 1:
            epoch = epoch.item()
        if isinstance(epoch, (int, float)):
            info["epoch"] = int(epoch)
    return model, {p: v for p, v in norm.items() if v}, info


# ----------------------------------------------------------------------------- checking


def _head(encoder_name: str) -> tuple[str, int]:
    """(state-dict key of the classifier head's weight, i.e. the last 2-D tensor, and its
    default output count), from a weightless build."""
    with torch.device("meta"):
        sd = create_encoder(encoder_name).state_dict()
    key = [k for k, v in sd.items() if v.ndim == 2][-1]
    return key, int(sd[key].shape[0])


def _num_classes(path: Path, sd: dict, encoder_name: str, given: int | None) -> int:
    key, default = _head(encoder_name)
    head = sd.get(key)
    found = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    if given is not None and found is not None and given != found:
        raise CheckpointError(f"{path}: num_classes {given} given, but the head {key} has "
                              f"{found} outputs; leave num_classes out to use the file's")
    if given is not None:
        return given
    if found is not None:
        return found
    return default  # no head where this encoder has one: the strict load says what is wrong


def _check_normalizer(path: Path, norm: dict, model) -> None:
    ours = {"new_mean": model.normalize.mean.flatten(), "new_std": model.normalize.std.flatten()}
    for prefix, stats in norm.items():
        theirs = {k: stats[k].flatten().float() for k in ("new_mean", "new_std") if k in stats}
        bad = [k for k, v in theirs.items()
               if v.shape != ours[k].shape or (v - ours[k]).abs().max() > NORM_TOLERANCE]
        if bad:
            raise CheckpointError(
                f"{path}: its input normaliser ({prefix}new_mean {_vec(theirs.get('new_mean'))}, "
                f"new_std {_vec(theirs.get('new_std'))}) differs from {model.arch['name']}'s own "
                f"(mean {_vec(ours['new_mean'])}, std {_vec(ours['new_std'])}): the weights "
                "expect other input statistics (another data set?); import them into an "
                "encoder that normalises like they do")


def _check_fit(path: Path, model, sd: dict) -> None:
    """Every key of ``model`` in ``sd``, nothing else, every shape equal."""
    name = model.arch["name"]
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(s)}" for k, s in expected.items()
              if k in sd and sd[k].shape != s]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing keys ({_first(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected keys ({_first(unexpected)})" if unexpected else "",
                 f"{len(shapes)} shape mismatches (file vs encoder: "
                 f"{', '.join(shapes[:_SHOWN])})" if shapes else ""]
        raise CheckpointError(f"{path}: wrong architecture for encoder {name}: "
                              f"{'; '.join(p for p in parts if p)}. Expected {name}, "
                              f"{_guess(sd, name)}")


def _guess(sd: dict, asked: str) -> str:
    """Which registered encoder the keys look like (shapes compared, the head's size aside)."""
    best, best_score = None, 0.0
    for name in list_encoders():
        with torch.device("meta"):
            theirs = create_encoder(name).state_dict()
        head = _head(name)[0].rsplit(".", 1)[0] + "."
        same = sum(1 for k, v in sd.items() if k in theirs and
                   (k.startswith(head) or tuple(v.shape) == tuple(theirs[k].shape)))
        score = same / max(len(sd), len(theirs))
        if score > best_score:
            best, best_score = name, score
    if best is None or best_score < 0.5:
        return f"but the keys match no registered encoder ({', '.join(list_encoders())})?"
    if best == asked:
        return f"and the keys look like {best} but with other shapes (num_classes?)"
    closeness = "look like" if best_score == 1.0 else "look closest to"
    return f"but the keys {closeness} {best}? (use that encoder)"


def _first(keys, n: int = _SHOWN) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _vec(t) -> str:
    return "missing" if t is None else "[" + ", ".join(f"{float(x):.4f}" for x in t) + "]"


def _plain(x):
    """Tensors and tuples out, so the provenance stays plain data in the checkpoint."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x
