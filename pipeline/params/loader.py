"""``params.yaml`` parsed once into frozen pydantic models.

Every section forbids unknown keys, so a misspelled key is an error that names the key and the
file instead of a silent default. Stages receive the validated section they need.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from common.frozen import Frozen
from models.config import TrainConfig
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
from pipeline.params.segment import SegmentParams

DEFAULT_PARAMS = "params.yaml"


class ParamsError(ValueError):
    """A params file is missing, unreadable or does not validate."""


# ----------------------------------------------------------------------------- CT sections
class PhantomParams(Frozen):
    """Synthetic abdominal CT cohort written in the TCIA Pancreas-CT layout."""

    cases: int = Field(8, ge=1, le=999)
    seed: int = 0
    slices: int = Field(48, ge=8, description="axial slices per case")
    matrix: int = Field(256, ge=64, description="rows = columns of each DICOM image")
    slice_thickness_mm: float = Field(2.5, gt=0)


class WindowParams(Frozen):
    """CT intensity window in Hounsfield units (abdominal soft tissue by default)."""

    level: float = 40.0
    width: float = Field(400.0, gt=0)


class SplitParams(Frozen):
    """Patient-level split: seeded fractions, or explicit case lists that override them."""

    seed: int = 0
    train: float = Field(0.6, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)
    cases: dict[str, list[str]] | None = None

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total}")
        if self.cases is not None:
            unknown = set(self.cases) - {"train", "val", "test"}
            if unknown:
                raise ValueError(f"split.cases has unknown split(s) {sorted(unknown)}")
            from pipeline.cohort.split import check_disjoint  # split.py imports this module

            check_disjoint(self.cases)
        return self


class PairsIntensity(Frozen):
    """Linear map from stored pixel value to Hounsfield units: ``HU = scale * pixel + offset``."""

    scale: float = 1.0
    offset: float = 0.0

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0 (every pixel would read the same HU)")
        return v


class PairsParams(Frozen):
    """Reading 2D image/mask file pairs (``images/<name>`` + ``masks/<name>``) as CT slices."""

    # Nominal in-plane spacing: the files do not record it (Pancreas-CT scans: 0.66-0.98 mm).
    pixel_mm: float = Field(0.8, gt=0)
    intensity: PairsIntensity = PairsIntensity()
    # Storage order of the rows; "posterior_to_anterior" is DICOM pixel_array order of TCIA
    # Pancreas-CT. Slices are flipped to anterior -> posterior like every other slice.
    rows: Literal["posterior_to_anterior", "anterior_to_posterior"] = "posterior_to_anterior"
    mask_threshold: int = Field(127, ge=0, le=254, description="pancreas where value > this")
    # Largest share of mask pixels in the mid-grey band (64..191) a binary mask may have:
    # JPEG ringing puts a few there, a grey-scale image saved as a mask puts most there.
    max_grey_fraction: float = Field(0.05, ge=0, le=1)
    # Matched against the file name without its extension; needs groups 'case' and 'slice'.
    pattern: str = r"^(?P<case>.+)-(?P<slice>\d+)$"

    @field_validator("pattern")
    @classmethod
    def _groups(cls, v: str) -> str:
        try:
            groups = re.compile(v).groupindex
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        missing = sorted({"case", "slice"} - set(groups))
        if missing:
            raise ValueError(f"pattern needs named group(s) {missing}, e.g. (?P<case>...)")
        return v


class SlicesParams(Frozen):
    """Window, resample, crop and split HU volumes (or 2D image/mask pairs) into 2D slices."""

    # Input folder (``gvae slices --input`` overrides it): the ingest output for "volumes", a
    # folder of images/ + masks/ for "pairs".
    input: str = "data/volumes"
    source: Literal["volumes", "pairs"] = "volumes"
    pairs: PairsParams = PairsParams()
    window: WindowParams = WindowParams()
    # Square field of view in mm; pixel size is fov_mm / size in every case. 200 mm covers the
    # upper abdomen around the pancreas (at 64 px a 3.1 mm pixel).
    fov_mm: float = Field(200.0, gt=0)
    # Crop centre: the body centre of each case ("body"), or the body centre plus one fixed
    # offset, the mean pancreas-minus-body offset of the TRAINING cases ("train_masks").
    centre: Literal["body", "train_masks"] = "train_masks"
    size: int = Field(64, ge=16)
    negative_fraction: float = Field(0.1, ge=0, le=1)
    shard_size: int = Field(512, ge=1)
    seed: int = 0
    split: SplitParams = SplitParams()

    @field_validator("size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"size must be a power of two, got {v}")
        return v


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


def _format_error(path: Path, section: str, exc: ValidationError) -> str:
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


def _resolved(path: Path, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read ``path`` (unless ``raw`` is given), check its top level, apply the profile."""
    raw = read_yaml(path) if raw is None else raw
    _check_top_level(path, raw)
    return resolve_profile(raw)


def load_section(path: str | os.PathLike, section: str, raw: dict[str, Any] | None = None) -> Any:
    """Validate one section of ``path`` with its registered model and return it."""
    path = Path(path)
    resolved = _resolved(path, raw)
    if section not in SECTIONS:
        raise ParamsError(f"{path}: no such params section '{section}'")
    try:
        return SECTIONS[section].model_validate(resolved.get(section) or {})
    except ValidationError as exc:
        raise ParamsError(_format_error(path, section, exc)) from None


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
    from pipeline.augment.segment.experiment import synthetic_models  # numpy: only when checked

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
    resolved = _resolved(path)
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
        raise ParamsError(_format_error(path, f"models.{name}.model", exc)) from None
    except (KeyError, ValueError) as exc:  # a name the registry does not know
        raise ParamsError(f"{path}: models.{name}: {exc}") from None
    train_raw = deep_merge(resolved.get("train") or {}, train_over)
    try:
        train_cfg = SECTIONS["train"].model_validate(train_raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(path, f"models.{name}.train", exc)) from None
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
    return list((_resolved(Path(path)).get("models") or {}).keys())
