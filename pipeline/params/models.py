"""The ``models:`` section: one block per registry model, validated by that model's config class.

Apart from the section loader because it needs the model registry (and so torch): only the
stages that build or list models import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline.errors import ParamsError
from pipeline.params.loader import SECTIONS, deep_merge, format_error, load_section, resolved_params


def load_model_config(path: str | os.PathLike, name: str, ct: bool = False) -> tuple[Any, Any]:
    """Return ``(model_config, train_config)`` for ``models.<name>``, profile applied.

    With ``ct=True`` the ``ct.model`` and ``ct.train`` overrides are merged over the entry's
    ``model`` and the shared ``train`` (CT pairs get their own budget, same architecture code).

    A model entry is ``{model: {...}, train: {...}}``: ``model`` is validated by the registry's
    config class for ``name``, ``train`` overrides the shared ``train`` section for this model
    only (WGAN-GP's Adam betas, say). Unknown names list the valid ones; misspelled keys are
    named as ``models.<name>.model.<key>``.
    """
    from models.registry import model_config  # torch is imported only by stages that train

    path = Path(path)
    resolved = resolved_params(path)
    entries = resolved.get("models") or {}
    if name not in entries:
        raise ParamsError(f"{path}: no 'models.{name}' entry (have: {', '.join(sorted(entries))})")
    entry = entries[name] or {}
    unknown = sorted(set(entry) - {"model", "train"})
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {unknown} in models.{name} (model, train)")
    model_raw, train_over = entry.get("model") or {}, entry.get("train") or {}
    if ct:
        ct_params = load_section(path, "ct", resolved)
        model_raw = deep_merge(model_raw, ct_params.model)
        train_over = deep_merge(train_over, ct_params.train)
    try:
        model_cfg = model_config(name, model_raw)
    except ValidationError as exc:
        raise ParamsError(format_error(path, f"models.{name}.model", exc)) from None
    except (KeyError, ValueError) as exc:  # a name the registry does not know
        raise ParamsError(f"{path}: models.{name}: {exc}") from None
    train_raw = deep_merge(resolved.get("train") or {}, train_over)
    try:
        train_cfg = SECTIONS["train"].model_validate(train_raw)
    except ValidationError as exc:
        raise ParamsError(format_error(path, f"models.{name}.train", exc)) from None
    return model_cfg, train_cfg


def load_params_models(path: str | os.PathLike) -> list[str]:
    """Return ``mnist.models``, the compared models in table order; each must have a block.

    ``models:`` may configure more registry entries than the DAG trains (``configured_models``).
    """
    path = Path(path)
    compared = load_section(path, "mnist").models
    missing = [m for m in compared if m not in configured_models(path)]
    if missing:
        raise ParamsError(f"{path}: mnist.models names {missing} with no 'models.<name>' block")
    return compared


def configured_models(path: str | os.PathLike) -> list[str]:
    """Return the model names of the ``models`` section, in file order."""
    return list((resolved_params(Path(path)).get("models") or {}).keys())
