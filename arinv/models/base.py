"""What every encoder shares: [0, 1] images in, normalisation inside, named feature taps."""

from __future__ import annotations

import abc
from typing import Iterator, Sequence

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """(x - mean) / std with non-persistent buffers, so state dicts stay torchvision-compatible."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Encoder(nn.Module, abc.ABC):
    """Base class for classifiers whose intermediate maps we invert.

    ``encoder(x)`` takes images in [0, 1] and returns logits; ``encoder.features(x, tap)``
    runs only the layers up to ``tap``. ``arch`` identifies the exact architecture (name and
    every shape-changing argument) so checkpoints can refuse to load into a different one.
    """

    taps: tuple[str, ...] = ()
    input_size: int = 224  # the resolution the architecture was designed for

    def __init__(self, normalize: Normalize, arch: dict):
        super().__init__()
        self.normalize = normalize
        self.arch = arch

    @abc.abstractmethod
    def layers(self) -> Iterator[tuple[str | None, nn.Module]]:
        """The trunk in order; a layer whose output is a tap is yielded with the tap's name."""

    @abc.abstractmethod
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last trunk output -> logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalize(x)
        for _, layer in self.layers():
            h = layer(h)
        return self.head(h)

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        if layer not in self.taps:
            raise ValueError(f"unknown tap {layer!r} for {self.arch['name']}; taps: {self.taps}")
        h = self.normalize(x)
        for name, module in self.layers():
            h = module(h)
            if name == layer:
                return h
        raise AssertionError(f"tap {layer!r} is declared but no layer yields it")

    @torch.no_grad()
    def feature_shape(self, layer: str, resolution: int | None = None) -> tuple[int, ...]:
        """(C, H, W) of a tap at ``resolution`` (default: ``input_size``), found by a dry run."""
        r = resolution or self.input_size
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            out = self.features(torch.zeros(1, 3, r, r, device=p.device, dtype=p.dtype), layer)
        finally:
            self.train(was_training)
        return tuple(out.shape[1:])
