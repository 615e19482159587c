"""Untrained small AlexNet autoencoders saved as checkpoints, for commands whose plumbing (not
the paper's numbers) a test checks."""

from __future__ import annotations

import torch

from arinv.checkpoint import save_checkpoint
from arinv.config import EncoderTrainConfig, GeneratorTrainConfig, to_dict
from arinv.models import create_encoder, create_generator


def toy_pair(d, seed: int, layer: str = "conv5", resolution: int | None = None):
    """(encoder file, generator file): an alexnet_small and the generator of its ``layer``."""
    torch.manual_seed(seed)
    enc = create_encoder("alexnet_small", num_classes=8)
    gen = create_generator(f"alexnet_small_{layer}")
    ecfg = EncoderTrainConfig(name=f"enc{seed}")
    ecfg.encoder.name = "alexnet_small"
    ecfg.encoder.num_classes = 8
    efile = save_checkpoint(d / f"enc{seed}.pt", kind="encoder", arch=enc.arch,
                            modules={"model": enc}, progress={"epoch": 0, "history": []},
                            config=to_dict(ecfg))
    gcfg = GeneratorTrainConfig(name=f"gen{seed}", resolution=resolution)
    gcfg.encoder.name, gcfg.encoder.layer = "alexnet_small", layer
    gcfg.generator.name = f"alexnet_small_{layer}"
    gfile = save_checkpoint(d / f"gen{seed}-{layer}.pt", kind="generator",
                            arch={"generator": gen.arch, "discriminator": None,
                                  "encoder": enc.arch},
                            modules={"generator": gen}, progress={"epoch": 0, "history": []},
                            config=to_dict(gcfg))
    return efile, gfile
