"""Model families. Encoders take images in [0, 1]; normalisation lives inside the model."""

from __future__ import annotations

from . import alexnet as _alexnet  # noqa: F401  (registers)
from . import resnet_cifar as _resnet_cifar  # noqa: F401  (registers)
from .base import Encoder
from .registry import create, names


def create_encoder(name: str, num_classes: int = 1000, **kw) -> Encoder:
    """Build a registered encoder, e.g. ``create_encoder("alexnet", num_classes=1000)``."""
    return create("encoder", name, num_classes=num_classes, **kw)


def list_encoders() -> list[str]:
    return names("encoder")


__all__ = ["Encoder", "create_encoder", "list_encoders"]
