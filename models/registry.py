"""The model registry: the zoo's ``@register("gvae", GVAEConfig)`` fills one dict.

Every module of the ``models/zoo`` folder is imported (found by listing the folder, so a new
model is a new zoo module and nothing here changes); each registers its classes with
``models.zoo.register``. A class may be registered under several names with different config
classes: ``beta_vae`` is the VAE class with ``BetaVAEConfig`` (beta = 4 by default), not a
copied class.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from pydantic import BaseModel

import models.zoo
from models.base import GenerativeModel
from models.config import NetConfig
from models.zoo import _REGISTRY


class UnknownModelError(KeyError, ValueError):
    """An unregistered model name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@cache
def _load_all() -> None:
    """Import every module of the models/zoo folder once (registration is their decorator)."""
    for module in pkgutil.iter_modules(models.zoo.__path__, "models.zoo."):
        importlib.import_module(module.name)


def available() -> list[str]:
    """Sorted names of every registered model."""
    _load_all()
    return sorted(_REGISTRY)


def lookup(name: str) -> tuple[type[GenerativeModel], type[NetConfig]]:
    """(model class, config class) for ``name``; ``UnknownModelError`` lists the valid names."""
    _load_all()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_config(name: str, cfg: dict[str, Any] | BaseModel | None = None) -> NetConfig:
    """Validate ``cfg`` against ``name``'s config class (a pydantic error on bad keys)."""
    _, config_cls = lookup(name)
    if cfg is None:
        return config_cls()
    if isinstance(cfg, config_cls):
        return cfg
    if isinstance(cfg, BaseModel):
        cfg = cfg.model_dump()
    if not isinstance(cfg, dict):
        raise TypeError(f"model config must be a dict or pydantic model, got {type(cfg)}")
    return config_cls.model_validate(cfg)


def build_model(
    name: str, cfg: dict[str, Any] | BaseModel | None, channels: int, size: int
) -> GenerativeModel:
    """Build the registered model ``name`` for (channels, size, size) images.

    Returns the model in train mode with ``model.name == name``. Raises ``UnknownModelError``
    (a ``KeyError`` and ``ValueError``) listing the valid names, a pydantic ``ValidationError``
    for bad config keys/values, and ``ValueError`` for a bad geometry.
    """
    cls, _ = lookup(name)
    model = cls(model_config(name, cfg), channels, size)
    model.name = name
    return model
