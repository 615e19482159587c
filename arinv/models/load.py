"""Rebuild a trained encoder or generator from its checkpoint, for consumers (the registry's
pyfunc models, downstream applications): imports models and the checkpoint format only, no
optimiser, training loop or Ray code."""

from __future__ import annotations

from pathlib import Path

import torch

from arinv.checkpoint import load_checkpoint, read_checkpoint
from arinv.config import DenoiserTrainConfig, EncoderTrainConfig, GeneratorTrainConfig, stored
from arinv.models import create_encoder, create_generator


def load_encoder(path: str | Path, device="cpu") -> tuple[torch.nn.Module, EncoderTrainConfig]:
    """The encoder saved by an encoder run (weights only; eval mode) and its run's config."""
    payload = read_checkpoint(path, "encoder")
    arch = dict(payload["arch"])
    model = create_encoder(arch.pop("name"), **arch)
    load_checkpoint(path, kind="encoder", arch=model.arch, modules={"model": model},
                    restore_rng=False)
    return model.to(device).eval(), stored(EncoderTrainConfig, payload["config"])


def load_generator(path: str | Path, device="cpu") -> tuple[torch.nn.Module, GeneratorTrainConfig]:
    """The generator saved by a generator run (weights only; eval mode) and its run's config."""
    payload = read_checkpoint(path, "generator")
    arch = dict(payload["arch"])
    g_arch = dict(arch["generator"])
    g = create_generator(g_arch.pop("name"), **g_arch)
    load_checkpoint(path, kind="generator", arch={**arch, "generator": g.arch},
                    modules={"generator": g}, restore_rng=False)
    return g.to(device).eval(), stored(GeneratorTrainConfig, payload["config"])


def load_denoiser(path: str | Path, device="cpu") -> tuple[torch.nn.Module, DenoiserTrainConfig]:
    """The wavelet denoising autoencoder saved by a denoiser run (its frozen encoder included;
    eval mode) and its run's config."""
    from arinv.models.base import IMAGENET_MEAN, IMAGENET_STD, Normalize
    from arinv.models.denoiser import WaveletAutoencoder, WaveletDecoder, WaveletEncoder

    payload = read_checkpoint(path, "denoiser")
    arch = payload["arch"]
    width = arch["denoiser"]["width"]
    model = WaveletAutoencoder(WaveletEncoder(width, Normalize(IMAGENET_MEAN, IMAGENET_STD)),
                               WaveletDecoder(width))
    load_checkpoint(path, kind="denoiser", arch=arch, modules={"generator": model},
                    restore_rng=False)
    model.encoder.requires_grad_(False)
    return model.to(device).eval(), stored(DenoiserTrainConfig, payload["config"])
