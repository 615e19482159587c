"""The MLflow model registry: trained encoders and generator + encoder pairs as pyfunc models
(``pipelines/pyfunc_model.py``, with the ``arinv`` code inside), aliases, and checkpoint
download for consumers (``fetch_checkpoint("models:/arinv-alexnet@robust")``)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import ModelNotFound, RegistryError
from pipelines.tracking import (
    _REJECTED,
    KIND_TAG,
    _explain_unreachable,
    _safe,
    _short,
    use_tracking_uri,
)

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
def register_encoder(tracking_uri: str, run_id: str, checkpoint, *, name: str, alias: str):
    """Log encoder ``checkpoint`` (weights only) as pyfunc model "encoder" of run ``run_id``,
    register it as ``name`` and point ``alias`` at the new version; returns the READY
    ModelVersion. Predict: float32 images N x 3 x R x R in [0, 1] -> {"logits"}."""
    import torch

    from arinv.checkpoint import export_weights
    from arinv.models.load import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        enc_file = export_weights(checkpoint, Path(tmp) / "encoder.pt", ("model",))
        model, cfg = load_encoder(enc_file)
        r = cfg.encoder.resolution or model.input_size
        example = _input_example(r)
        with torch.no_grad():
            outputs = {"logits": model(torch.from_numpy(example[:1]))}
        tags = {KIND_TAG: "encoder", "arinv.arch": model.arch["name"], "arinv.resolution": r}
        return _log_and_register(tracking_uri, run_id, "encoder", {"encoder": enc_file},
                                 _signature(example, outputs), example,
                                 name=name, alias=alias, tags=tags)


def register_autoencoder(tracking_uri: str, run_id: str, *, encoder_checkpoint,
                         generator_checkpoint, name: str, alias: str):
    """Like :func:`register_encoder` for an encoder + the generator inverting its layer.
    Predict: images -> {"reconstruction": N x 3 x R x R in [0, 1], "features": the layer}."""
    import torch

    from arinv.checkpoint import export_weights
    from arinv.models.load import load_encoder, load_generator

    with tempfile.TemporaryDirectory() as tmp:
        files = {"encoder": export_weights(encoder_checkpoint, Path(tmp) / "encoder.pt",
                                           ("model",)),
                 "generator": export_weights(generator_checkpoint, Path(tmp) / "generator.pt",
                                             ("generator",))}
        encoder, _ = load_encoder(files["encoder"])
        generator, gcfg = load_generator(files["generator"])
        if gcfg.encoder.name != encoder.arch["name"]:
            raise RegistryError(f"{generator_checkpoint}: inverts a {gcfg.encoder.name} encoder, but "
                             f"{encoder_checkpoint} holds a {encoder.arch['name']}")
        layer, r = gcfg.encoder.layer, gcfg.resolution or encoder.input_size
        example = _input_example(r)
        with torch.no_grad():
            features = encoder.features(torch.from_numpy(example[:1]), layer)
            outputs = {"reconstruction": generator(features), "features": features}
        tags = {KIND_TAG: "autoencoder", "arinv.arch": encoder.arch["name"],
                "arinv.generator": generator.arch["name"], "arinv.layer": layer,
                "arinv.resolution": r}
        return _log_and_register(tracking_uri, run_id, "autoencoder", files,
                                 _signature(example, outputs), example,
                                 name=name, alias=alias, tags=tags)


def register_denoiser(tracking_uri: str, run_id: str, checkpoint, *, name: str, alias: str):
    """Like :func:`register_encoder` for a wavelet denoising autoencoder (its checkpoint holds
    the frozen encoder too). Predict: noisy images -> {"denoised": N x 3 x H x W in [0, 1]}."""
    import torch

    from arinv.checkpoint import export_weights
    from arinv.models.load import load_denoiser

    with tempfile.TemporaryDirectory() as tmp:
        file = export_weights(checkpoint, Path(tmp) / "denoiser.pt", ("generator",))
        model, cfg = load_denoiser(file)
        from arinv.models import create_encoder

        with torch.device("meta"):
            r = cfg.resolution or create_encoder(cfg.encoder.name, num_classes=2).input_size
        example = _input_example(r)
        with torch.no_grad():
            outputs = {"denoised": model(torch.from_numpy(example[:1]))}
        tags = {KIND_TAG: "denoiser", "arinv.arch": cfg.encoder.name,
                "arinv.noise_sigma": cfg.noise.sigma, "arinv.resolution": r}
        return _log_and_register(tracking_uri, run_id, "denoiser", {"denoiser": file},
                                 _signature(example, outputs), example,
                                 name=name, alias=alias, tags=tags)


_ALIAS = re.compile(r"^[\w-]{1,255}$")  # MLflow's alias rule; 'latest' and v<N> are reserved


def import_encoder(tracking_uri: str, path, encoder_name: str, *, name: str | None = None,
                   alias: str, experiment: str = "arinv", robust_eps: float | None = None,
                   robust_norm: str = "l2", num_classes: int | None = None,
                   layout: str = "auto") -> dict:
    """Register a published classifier file ``path`` (torchvision or robustness library
    layout, checked by ``arinv.models.imports``) as arinv encoder ``name`` (default
    ``arinv-<encoder_name>``) at ``alias``, from an MLflow run tagged ``arinv.kind=import``
    whose params say where it came from. ``robust_eps`` / ``robust_norm``: the threat model
    it was adversarially trained for, as declared by the caller (None: a standard encoder).

    Idempotent: the run is keyed by the file's sha256 and the alias; a rerun registers no new
    version, and a rerun declaring other settings under the same alias is refused.
    Returns {"uri", "name", "alias", "version", "run_id", "reused", "info"}."""
    from mlflow.entities import Param

    from arinv.config import AttackConfig, ConfigError
    from arinv.models.imports import import_state_dict, write_encoder_checkpoint
    from pipelines.tracking import find_or_create_run, find_run

    if not _ALIAS.match(alias or "") or re.match(r"^(latest|v\d+)$", alias, re.IGNORECASE):
        raise RegistryError(f"alias {alias!r}: use letters, digits, '_' and '-' (not 'latest' "
                            "or v<number>, which MLflow reserves), e.g. madry-l2-3")
    name = name or f"arinv-{encoder_name}"
    if not name.strip() or "/" in name or ":" in name:
        raise RegistryError(f"model name {name!r}: must be non-empty, without '/' or ':'")
    if robust_norm not in ("l2", "linf"):
        raise ConfigError(f"robust_norm: {robust_norm!r} is not l2 or linf")
    attack = None
    if robust_eps is not None:
        attack = AttackConfig(eps=float(robust_eps), norm=robust_norm)
        if attack.check():
            raise ConfigError("; ".join(f"robust_{e}" for e in attack.check()))
    model, info = import_state_dict(path, encoder_name, num_classes=num_classes, layout=layout)

    params = {"source.file": info["file"], "source.sha256": info["sha256"],
              "source.layout": info["layout"], "source.epoch": info.get("epoch", "none"),
              "encoder.name": encoder_name, "encoder.num_classes": info["num_classes"],
              "robust.eps": attack.eps if attack else "none",
              "robust.norm": attack.norm if attack else "none"}
    params = {k: str(v) for k, v in params.items()}
    run_key = f"import-{info['sha256']}-{alias}"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    with _explain_unreachable(tracking_uri, f"importing {info['file']}"):
        earlier = find_run(tracking_uri, experiment, run_key)
        logged = client.get_run(earlier).data.params if earlier else {}
        diff = [f"{k}: {logged[k]} then, {v} now" for k, v in params.items()
                if k != "source.file" and logged.get(k, v) != v]  # a renamed copy is the same
        if diff:
            raise RegistryError(
                f"{info['file']} was imported under alias {alias!r} before (run {earlier} in "
                f"experiment {experiment!r}) with other settings ({'; '.join(diff)}); choose "
                "another alias for these")
        run_id = find_or_create_run(tracking_uri, experiment, run_key,
                                    run_name=_safe(f"import-{Path(path).stem}-{alias}"),
                                    tags={KIND_TAG: "import"})
        new = [Param(k, v) for k, v in params.items() if k not in logged]  # params: write-once
        if new:
            client.log_batch(run_id, params=new)
        mv = registered_version(client, name, alias, run_id)
    reused = mv is not None
    if not reused:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = write_encoder_checkpoint(model, Path(tmp) / "encoder.pt", attack=attack,
                                            name=_safe(f"import-{Path(path).stem}"), source=info)
            mv = register_encoder(tracking_uri, run_id, ckpt, name=name, alias=alias)
    with _explain_unreachable(tracking_uri, f"closing run {run_id}"):
        client.set_terminated(run_id, "FINISHED")
    return {"uri": f"models:/{name}@{alias}", "name": name, "alias": alias,
            "version": mv.version, "run_id": run_id, "reused": reused, "info": info}


def _log_and_register(tracking_uri, run_id, artifact_name, files: dict, signature, example, *,
                      name, alias, tags, ready_timeout: float = 300.0):
    from mlflow.models import Model

    import arinv

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    tags = {k: str(v) for k, v in tags.items()}
    with (_explain_unreachable(tracking_uri, f"registering {name!r}"),
          use_tracking_uri(tracking_uri)):
        done = registered_version(client, name, alias, run_id)
        if done is not None:  # a finished run relaunched: its model is registered already
            return done
        exp_id = client.get_run(run_id).info.experiment_id
        # Model.log without an active run would put the LoggedModel in the default experiment.
        logged = client.create_logged_model(exp_id, name=artifact_name, source_run_id=run_id,
                                            tags=tags)
        info = Model.log(None, name=artifact_name, flavor=mlflow.pyfunc, run_id=run_id,
                         model_id=logged.model_id, flavor_name="pyfunc.ModelFromCode",
                         python_model=str(PYFUNC_CODE),
                         artifacts={k: str(v) for k, v in files.items()},
                         code_paths=[str(Path(arinv.__file__).parent)],
                         signature=signature, input_example=example,
                         pip_requirements=_requirements())
        _ensure_registered_model(client, name)
        mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags,
                                         model_id=info.model_id, await_creation_for=0)
        _wait_ready(client, name, mv.version, ready_timeout)
        client.set_registered_model_alias(name, alias, mv.version)
        return client.get_model_version(name, mv.version)


def registered_version(client: MlflowClient, name: str, alias: str, run_id: str):
    """The version ``name@alias`` points at if it came from run ``run_id``, else None."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return mv if mv.run_id == run_id else None


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _wait_ready(client: MlflowClient, name: str, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION":
            raise RuntimeError(f"model {name!r} version {version} failed to register: "
                               f"{mv.status_message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {name!r} version {version} still {mv.status} after "
                               f"{timeout:.0f} s")
        time.sleep(0.5)


def _input_example(resolution: int) -> np.ndarray:
    # Two images of quarter-step values: real-shaped but a short JSON file.
    rng = np.random.default_rng(0)
    return (rng.integers(0, 5, (2, 3, resolution, resolution)) / 4).astype(np.float32)


def _signature(example: np.ndarray, outputs: dict):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(shape, name):
        return TensorSpec(np.dtype(np.float32), (-1, *shape[1:]), name)

    # An unnamed input: predict receives the array itself, not {"images": array}.
    return ModelSignature(inputs=Schema([spec(example.shape, None)]),
                          outputs=Schema([spec(t.shape, n) for n, t in outputs.items()]))


def _requirements() -> list[str]:
    out = []
    for pkg in ("torch", "torchvision", "numpy", "pyyaml", "pillow", "tqdm"):
        try:
            out.append(f"{pkg}=={importlib.metadata.version(pkg).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# -------------------------------------------------------------------------------- consumers

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?$")


def encoder_file(cfg, tracking_uri: str, cache: str | None) -> str | None:
    """A local path for a generator config's ``encoder.checkpoint``: a registry URI is fetched
    into ``cache``, an ``s3://`` checkpoint (another run's stored state) copied there once."""
    ref = cfg.encoder.checkpoint
    if ref and ref.startswith(("models:/", "runs:/")):
        return str(fetch_checkpoint(ref, tracking_uri, cache_dir=cache))
    if ref and ref.startswith("s3://"):
        from pipelines.trainer import stored_file

        return str(stored_file(ref, cache))
    return ref


def task_inputs(cfg, tracking_uri: str, cache: str | None) -> dict:
    """The files a run's task needs, resolved to local paths (``make_task``'s inputs): a
    generator's encoder checkpoint."""
    ref = getattr(getattr(cfg, "encoder", None), "checkpoint", None)
    return {"encoder_checkpoint": encoder_file(cfg, tracking_uri, cache)} if ref else {}


def fetch_checkpoint(model_uri: str, tracking_uri: str | None = None, *,
                     part: str = "encoder", cache_dir=None) -> Path:
    """Local path of the arinv checkpoint inside a registered / logged arinv model
    (``models:/name@alias``, ``models:/name/3``, ``models:/name/latest``, ``runs:/...``).

    ``part`` is "encoder" (the default; for an autoencoder that is the encoder its generator
    inverts), "generator" (autoencoders only) or "denoiser" (denoisers only). Artifacts are cached per model version under
    ``cache_dir`` (default ``$ARINV_MODEL_CACHE`` or ``~/.cache/arinv/models``).
    """
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    if part not in ("encoder", "generator", "denoiser"):
        raise ValueError(f"part={part!r}: use 'encoder', 'generator' or 'denoiser'")
    from pipelines.trainer import model_cache_dir

    root = model_cache_dir(cache_dir) / hashlib.sha1(tracking_uri.encode()).hexdigest()[:12]
    with (_explain_unreachable(tracking_uri, f"fetching {model_uri}"),
          use_tracking_uri(tracking_uri)):
        source, key = _resolve(model_uri, tracking_uri)
        local = root / key
        if not (local / "MLmodel").is_file():
            _download(source, local, tracking_uri)
    return _artifact_in(local, part, model_uri)


def _resolve(model_uri: str, tracking_uri: str) -> tuple[str, str]:
    """(URI to download, cache key). Registry URIs are pinned to a version first, so a moved
    alias never serves a stale cached copy."""
    if isinstance(model_uri, str) and model_uri.startswith("runs:/"):
        return model_uri, "uri-" + hashlib.sha1(model_uri.encode()).hexdigest()[:16]
    m = _MODELS_URI.match(model_uri) if isinstance(model_uri, str) else None
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    if m and not (m["alias"] or m["version"]) and m["name"].startswith("m-"):  # a LoggedModel id
        try:
            location = client.get_logged_model(m["name"]).artifact_location
        except MlflowException as e:
            if e.error_code not in _REJECTED:
                raise
            raise RegistryError(f"{model_uri}: no logged model {m['name']!r} at {tracking_uri}") from e
        return location, f"{_safe(m['name'])}"
    if m is None or not (m["alias"] or m["version"]):
        raise RegistryError(f"{model_uri!r}: not a model URI; use models:/<name>@<alias>, "
                         "models:/<name>/<version> or runs:/<run_id>/<artifact>")
    mv = _model_version(client, m["name"], m["alias"], m["version"], model_uri, tracking_uri)
    if mv.tags.get(KIND_TAG) not in ("encoder", "autoencoder", "denoiser"):
        raise RegistryError(f"{model_uri}: version {mv.version} of {mv.name!r} is not an arinv "
                         f"model (no {KIND_TAG} tag); register it with "
                         "pipelines.registry.register_encoder / register_autoencoder / "
                         "register_denoiser")
    digest = hashlib.sha1(f"{mv.source}|{mv.creation_timestamp}".encode()).hexdigest()[:8]
    # The underlying location, not models:/...: MLflow resolves those with the global
    # registry URI whatever tracking_uri / registry_uri download_artifacts is given.
    location = client.get_model_version_download_uri(mv.name, mv.version)
    return location, f"{_safe(mv.name)}/v{mv.version}-{digest}"


def _model_version(client, name, alias, version, model_uri, tracking_uri):
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            found = client.search_model_versions(f"name = '{name}'", max_results=1,
                                                 order_by=["version_number DESC"])
            if found:
                return found[0]
            raise ModelNotFound(f"{model_uri}: model {name!r} has no versions at {tracking_uri}")
        return client.get_model_version(name, version)
    except MlflowException as e:
        if e.error_code not in _REJECTED:
            raise
        raise ModelNotFound(_not_found(client, name, alias, version, model_uri, tracking_uri)) from e


def _not_found(client, name, alias, version, model_uri, tracking_uri) -> str:
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        return (f"{model_uri}: no registered model {name!r} at {tracking_uri} (registered: "
                f"{known}); register one with pipelines.registry.register_encoder, or fix the name")
    if alias:
        return (f"{model_uri}: model {name!r} has no alias {alias!r} (aliases: "
                f"{dict(model.aliases)}); set it with MlflowClient.set_registered_model_alias "
                "or use another alias")
    return f"{model_uri}: model {name!r} has no version {version!r} at {tracking_uri}"


def _download(source: str, local: Path, tracking_uri: str) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=local.parent, prefix=".download-"))
    try:
        got = mlflow.artifacts.download_artifacts(source, dst_path=str(tmp),
                                                  tracking_uri=tracking_uri)
        if local.exists():  # another process finished first
            shutil.rmtree(local, ignore_errors=True)
        os.replace(got, local)  # got: tmp itself, or tmp/<last part of source>
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _artifact_in(local: Path, part: str, model_uri: str) -> Path:
    from mlflow.models import Model

    try:
        flavor = Model.load(str(local)).flavors.get("python_function", {})
    except (MlflowException, OSError, ValueError) as e:
        raise RegistryError(f"{model_uri}: not an MLflow model ({_short(e)})") from None
    artifacts = flavor.get("artifacts") or {}
    if part not in artifacts:
        kind = ("an arinv autoencoder" if "generator" in artifacts else "an arinv encoder"
                if "encoder" in artifacts else "an arinv denoiser" if "denoiser" in artifacts
                else "not an arinv model")
        raise RegistryError(f"{model_uri}: has no {part} checkpoint ({kind}; artifacts: "
                         f"{sorted(artifacts)})")
    return local / artifacts[part]["path"]
