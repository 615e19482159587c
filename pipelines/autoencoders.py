"""Trained autoencoders for the downstream commands: a model part (encoder or generator
checkpoint) from a registry URI, an ``s3://`` stored checkpoint or a file, and an (encoder,
generator) pair loaded and checked against each other before any work starts."""

from __future__ import annotations

from pathlib import Path

from arinv.checkpoint import CheckpointError
from arinv.config import ConfigError
from arinv.data import storage
from pipelines.errors import RegistryError


def local_file(ref: str, part: str, tracking_uri: str | None, cache: str | None) -> Path:
    """A local path for a model part: a registry URI's ``part`` ("encoder" / "generator"),
    an ``s3://`` stored checkpoint (copied once), or a file."""
    if ref.startswith(("models:/", "runs:/")):
        from pipelines.registry import fetch_checkpoint

        return fetch_checkpoint(ref, tracking_uri, part=part, cache_dir=cache)
    if storage.is_s3(ref):
        from pipelines.trainer import stored_file

        return stored_file(ref, cache)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{ref}: no such {part} checkpoint file")
    return path


def encoder_column(ref: str, tracking_uri: str | None, cache: str | None):
    """(local file, the encoder's stored config) of an encoder reference: a registry URI
    (fetched; an autoencoder's gives its encoder), an ``s3://`` checkpoint or a file."""
    from arinv.models.load import load_encoder

    path = local_file(ref, "encoder", tracking_uri, cache)
    _, cfg = load_encoder(path)
    return path, cfg


def autoencoder_files(model_uri: str, tracking_uri: str | None, cache: str | None,
                      purpose: str = "anomaly scoring"):
    """(encoder, generator) checkpoint files of a registered autoencoder; a model of another
    kind (an encoder alone) is refused naming the URI and what was expected (``purpose``
    names the command that needs it); a missing one raises ``ModelNotFound``."""
    try:
        return (local_file(model_uri, "encoder", tracking_uri, cache),
                local_file(model_uri, "generator", tracking_uri, cache))
    except RegistryError as e:
        raise type(e)(f"{e}; {purpose} needs an autoencoder (an encoder and "
                            "the generator inverting it), e.g. one 'arinv train-generator' or "
                            "'arinv anomaly train' registered") from None


def load_pair(encoder_file, generator_file, layer: str | None = None, device="cpu"):
    """(encoder, generator, tap, resolution, generator config) of a trained pair, checked:
    the generator must invert this encoder's architecture at ``layer`` (default: the tap it
    was trained on), and its output must be an image of the encoder's input size."""
    import torch

    from arinv.models.load import load_encoder, load_generator
    from arinv.train.gan import freeze

    encoder, _ = load_encoder(encoder_file, device)
    generator, gcfg = load_generator(generator_file, device)
    if gcfg.encoder.name != encoder.arch["name"]:
        raise CheckpointError(f"{generator_file}: inverts a {gcfg.encoder.name} encoder, but "
                              f"{encoder_file} holds a {encoder.arch['name']}")
    trained = gcfg.encoder.layer
    if layer is not None and layer != trained:
        raise ConfigError(f"layer: the generator in {generator_file} inverts tap {trained!r} of "
                          f"{encoder.arch['name']}, not {layer!r}; score at {trained!r} (or "
                          f"train a generator for {layer!r})")
    r = gcfg.resolution or encoder.input_size
    with torch.no_grad():
        out = generator(encoder.eval().features(torch.zeros(1, 3, r, r, device=device), trained))
    if tuple(out.shape[1:]) != (3, r, r):
        raise CheckpointError(f"{generator_file}: turns {trained} features of a {r} px image "
                              f"into {tuple(out.shape[1:])}, not a 3 x {r} x {r} image")
    return freeze(encoder), freeze(generator.eval()), trained, r, gcfg
