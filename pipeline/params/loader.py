"""``params.yaml`` parsed once into frozen pydantic models.

Every section forbids unknown keys, so a misspelled key is an error that names the key and the
file instead of a silent default. Stages receive the validated section they need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from common.frozen import Frozen
from models.config import TrainConfig
from pipeline.errors import ParamsError
from pipeline.params.cohort import PhantomParams, SlicesParams
from pipeline.params.ct import CTParams, GenerateParams
from pipeline.params.export import ExportParams
from pipeline.params.fetch import FetchParams
from pipeline.params.flows import FlowsParams
from pipeline.params.ingest import IngestParams
from pipeline.params.quality import CtFeatureParams, QualityParams
from pipeline.params.sanity import (
    SANITY_DATASETS,
    ClassifierParams,
    EvaluateParams,
    MnistParams,
)
from pipeline.params.segment import SegmentParams, synthetic_models

DEFAULT_PARAMS = "params.yaml"


# ----------------------------------------------------------------------------- loading
SECTIONS: dict[str, type[Frozen]] = {
    "phantom": PhantomParams,
    "fetch": FetchParams,
    "ingest": IngestParams,
    "slices": SlicesParams,
    "mnist": MnistParams,
    "classifier": ClassifierParams,
    "evaluate": EvaluateParams,
    "train": TrainConfig,
    "ct": CTParams,
    "generate": GenerateParams,
    "ct_features": CtFeatureParams,
    "ct_quality": QualityParams,
    "segment": SegmentParams,
    "export": ExportParams,
    "flows": FlowsParams,
}


def format_error(path: Path, section: str, exc: ValidationError) -> str:
    lines = [f"{path}: invalid params"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in (section, *err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{loc}'")
        else:
            lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a params YAML file into a dict; raise ``ParamsError`` naming the file on failure."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return raw


def resolved_params(path: Path, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read ``path`` (unless ``raw`` is given), check its top level, apply the profile."""
    raw = read_yaml(path) if raw is None else raw
    _check_top_level(path, raw)
    return resolve_profile(raw)


def load_section(path: str | os.PathLike, section: str, raw: dict[str, Any] | None = None) -> Any:
    """Validate one section of ``path`` with its registered model and return it."""
    path = Path(path)
    resolved = resolved_params(path, raw)
    if section not in SECTIONS:
        raise ParamsError(f"{path}: no such params section '{section}'")
    try:
        return SECTIONS[section].model_validate(resolved.get(section) or {})
    except ValidationError as exc:
        raise ParamsError(format_error(path, section, exc)) from None


PROFILES = ("cpu", "full", "paper")
# The profile switch and the override blocks of the non-default profiles (a block is named after
# its profile): removed once the profile is applied.
PROFILE_KEYS = ("profile", "full", "paper")
# Top-level keys that are not pydantic sections (``models`` is validated per registry entry).
SPECIAL_KEYS = {*PROFILE_KEYS, "models"}
MIN_FULL_SEEDS = 3
# (section, key) lists that dvc.yaml expands stages over: the DAG's shape, not a run size.
DAG_LISTS = (("ct", "models"), ("mnist", "datasets"), ("mnist", "models"), ("mnist", "seeds"))


def _check_top_level(path: Path, raw: dict[str, Any]) -> None:
    # Every stage checks the top level, so a misspelled section is caught by whichever runs.
    unknown = sorted(set(raw) - set(SECTIONS) - SPECIAL_KEYS)
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}")
    for block in PROFILE_KEYS[1:]:
        bad_override = sorted(set(raw.get(block) or {}) - set(SECTIONS) - {"models"})
        if bad_override:
            raise ParamsError(f"{path}: unknown key(s) under '{block}': {bad_override}")
        # dvc.yaml expands its stages from these top-level lists; a profile cannot change them.
        for section, key in DAG_LISTS:
            if key in ((raw.get(block) or {}).get(section) or {}):
                raise ParamsError(
                    f"{path}: '{block}.{section}.{key}' is not allowed; set {section}.{key} itself"
                )
    profile = raw.get("profile", "cpu")
    if profile not in PROFILES:
        raise ParamsError(f"{path}: profile must be one of {PROFILES}, got {profile!r}")
    datasets = (raw.get("mnist") or {}).get("datasets", ["mnist"])
    if profile != "cpu" and sorted(datasets or []) != sorted(SANITY_DATASETS):
        # The large profiles report the paper's tables on both datasets; silently running one
        # would leave a `full` result without its Fashion-MNIST half.
        raise ParamsError(
            f"{path}: profile {profile!r} compares on both sanity datasets; also set "
            f"mnist.datasets: [mnist, fashion_mnist] (e.g. dvc exp run -S profile={profile} "
            "-S 'mnist.datasets=[mnist,fashion_mnist]')"
        )
    seeds = (raw.get("mnist") or {}).get("seeds", [0])
    if profile == "full" and len(seeds or []) < MIN_FULL_SEEDS:
        # The full tables report mean and sd over seeds: one run cannot rank close models.
        raise ParamsError(
            f"{path}: profile 'full' reports mean and sd over at least {MIN_FULL_SEEDS} seeds; "
            f"mnist.seeds is {seeds} (e.g. -S 'mnist.seeds=[0,1,2]')"
        )
    _check_grid_generators(path, raw, profile)


def _check_grid_generators(path: Path, raw: dict[str, Any], profile: str) -> None:
    # The grid reads the synthetic sets of the generators dvc.yaml trains (ct.models). A grid
    # generator missing from that list would stop the segment stage only after every other
    # generator had trained: hours into a `full` run. Refuse it before the first stage.
    segment = resolve_profile(raw).get("segment") or {}
    defaults = SegmentParams.model_fields
    try:
        used = synthetic_models(
            segment.get("conditions", defaults["conditions"].default),
            segment.get("models", defaults["models"].default),
        )
    except (TypeError, ValueError):
        return  # a malformed grid is the segment section's error, with its own message
    ct_default = CTParams.model_fields["models"].default_factory()
    ct_models = (raw.get("ct") or {}).get("models") or ct_default
    missing = sorted(used - set(ct_models))
    if missing:
        where = "" if profile == "cpu" else f" (profile {profile!r})"
        wanted = ",".join([*ct_models, *missing])
        raise ParamsError(
            f"{path}: the segmentation grid{where} reads synthetic slices of {missing}, which "
            f"ct.models {list(ct_models)} does not train; add them (e.g. "
            f"-S 'ct.models=[{wanted}]') or remove them from segment.conditions / segment.models"
        )


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``over`` merged in recursively (neither input is modified)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = deep_merge(base[key], value)
        else:
            out[key] = value
    return out


def resolve_profile(raw: dict[str, Any]) -> dict[str, Any]:
    """Apply the block of the selected profile; ``profile`` is the one switch of run size.

    The default profile (``cpu``) is what the sections say (whole ``dvc repro`` in minutes on two
    cores); ``full`` deep-merges the ``full:`` block (the complete CT grid on CPU, hours) and
    ``paper`` the ``paper:`` block (paper widths, latent 1000, batch 32, 128 px; GPU) over them.
    """
    sections = {k: v for k, v in raw.items() if k not in PROFILE_KEYS}
    profile = raw.get("profile", "cpu")
    if profile != "cpu":
        return deep_merge(sections, raw.get(profile) or {})
    return sections


def with_overrides(section: Frozen, overrides: dict[str, Any]) -> Any:
    """Return ``section`` re-validated with the CLI options that are not ``None`` merged in.

    Raises ``ParamsError`` ("invalid option: ...") when an option breaks the section's rules.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return type(section).model_validate({**section.model_dump(), **given})
    except ValidationError as exc:
        raise ParamsError(f"invalid option: {exc}") from None


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    """Parse and validate every section of ``path``; unknown top-level keys are errors."""
    path = Path(path)
    raw = read_yaml(path)
    return {name: load_section(path, name, raw) for name in SECTIONS}
