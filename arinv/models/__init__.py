"""Model families. Encoders take images in [0, 1] (normalisation lives inside the model);
generators return images in [0, 1]; discriminators return logits."""

from __future__ import annotations

from torch import nn

from . import alexnet as _alexnet  # noqa: F401  (registers)
from . import discriminator as _discriminator  # noqa: F401
from . import generators as _generators  # noqa: F401
from . import resnet_cifar as _resnet_cifar  # noqa: F401
from .base import Encoder
from .generators import GENERATOR_TAPS, Generator
from .registry import create, names


def create_encoder(name: str, num_classes: int = 1000, **kw) -> Encoder:
    """Build a registered encoder, e.g. ``create_encoder("alexnet", num_classes=1000)``."""
    return create("encoder", name, num_classes=num_classes, **kw)


def list_encoders() -> list[str]:
    return names("encoder")


def create_generator(name: str, **kw) -> Generator:
    """Build a registered generator, e.g. ``create_generator("alexnet_conv5")``;
    ``GENERATOR_TAPS[name]`` is the (encoder, tap) it inverts."""
    return create("generator", name, **kw)


def list_generators() -> list[str]:
    return names("generator")


def create_discriminator(name: str, **kw) -> nn.Module:
    return create("discriminator", name, **kw)


def list_discriminators() -> list[str]:
    return names("discriminator")


__all__ = ["Encoder", "Generator", "GENERATOR_TAPS", "create_encoder", "list_encoders",
           "create_generator", "list_generators", "create_discriminator", "list_discriminators"]
