"""Name -> constructor registries for model families (timm's ``register_model`` idiom).

Every registered name is picked up by the parametrised tests, so a new model is tested the day
it is added.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRIES: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "encoder": {},
    "generator": {},
    "discriminator": {},
}


def register(kind: str, name: str | None = None):
    """Decorator: ``@register("encoder")`` adds a constructor under its function name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        table = _REGISTRIES[kind]
        if key in table:
            raise ValueError(f"{kind} {key!r} is registered twice")
        table[key] = fn
        return fn

    return wrap


def names(kind: str) -> list[str]:
    return sorted(_REGISTRIES[kind])


def create(kind: str, name: str, **kwargs) -> nn.Module:
    table = _REGISTRIES[kind]
    if name not in table:
        raise ValueError(
            f"unknown {kind} {name!r}; registered {kind}s: {', '.join(sorted(table)) or 'none'}"
        )
    return table[name](**kwargs)
