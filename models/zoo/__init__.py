"""The model zoo: one module per model family, each registering its classes with ``register``.

``@register("gvae", GVAEConfig)`` fills ``_REGISTRY``; ``models.registry`` imports every module
of this folder (found by listing it) and answers the lookups. A new model is a new module here
that decorates its class; nothing else is edited. This package imports no zoo module, so a zoo
module can import ``register`` from it while the registry imports the zoo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.base import GenerativeModel
    from models.config import NetConfig

_REGISTRY: dict[str, tuple[type[GenerativeModel], type[NetConfig]]] = {}


def register(name: str, config_cls: type[NetConfig]) -> Callable[[type], type]:
    """Class decorator registering a ``GenerativeModel`` under ``name`` with its config class."""

    def deco(cls: type[GenerativeModel]) -> type[GenerativeModel]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = (cls, config_cls)
        return cls

    return deco
