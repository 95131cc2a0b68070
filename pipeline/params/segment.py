"""Params section of the segmentation experiment (``gvae segment``).

Registered in ``pipeline.params.loader.SECTIONS`` as ``segment``. The question the section
configures:
does adding synthetic labelled slices raise pancreas Dice on unseen real patients, and how does
that change as fewer real training patients are available? Defaults are sized for a 2-core CPU
at 64 px (a tiny UNet, a few hundred optimizer steps); GPU runs raise ``steps`` and ``unet``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.frozen import Frozen

# Condition kinds; the ``syn`` kinds take a model, ``real+syn:gvae`` (see pipeline.augment).
CONDITION_KINDS = ("real", "real+classical", "real+syn", "real+classical+syn", "syn")


class UNetParams(Frozen):
    """``monai.networks.nets.UNet`` (2D, 1 -> 1 channels): widths, strides, residual units."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _shape(self) -> UNetParams:
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"unet needs >= 2 channels and len(strides) == len(channels) - 1, got "
                f"channels {self.channels}, strides {self.strides}"
            )
        if min(self.channels) < 1 or min(self.strides) < 1:
            raise ValueError("unet channels and strides must be positive")
        return self


class ClassicalAugmentParams(Frozen):
    """Strength of the classical (geometric + intensity) augmentation, per training sample.

    Every transform is applied jointly to image and mask; the mask is resampled with nearest
    interpolation so it stays binary. ``prob`` is the chance each random transform fires.
    """

    prob: float = Field(0.5, ge=0, le=1, description="chance each transform is applied")
    flip_prob: float = Field(
        0.5,
        ge=0,
        le=1,
        description="left-right flip; note it mirrors the (left-sided) pancreas",
    )
    rotate_deg: float = Field(15.0, ge=0, le=180, description="rotation drawn in +-rotate_deg")
    zoom: tuple[float, float] = (0.9, 1.1)
    elastic: bool = True
    elastic_spacing_px: float = Field(16.0, gt=0, description="control-point grid spacing")
    elastic_magnitude: tuple[float, float] = (0.0, 2.0)
    intensity_scale: float = Field(0.1, ge=0, description="v * (1 + f), f in +-scale")
    intensity_shift: float = Field(0.1, ge=0, description="v + o, o in +-shift (range [-1, 1])")

    @field_validator("zoom", "elastic_magnitude")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1] or v[0] < 0:
            raise ValueError(f"need 0 <= low <= high, got {v}")
        return v


class SegmentParams(Frozen):
    """Grid of segmentation runs: conditions x training fractions x seeds, and how each trains.

    ``conditions`` lists condition kinds (``real``, ``real+classical``, ``real+syn``,
    ``real+classical+syn``, ``syn``); a ``syn`` kind without ``:model`` expands over ``models``,
    one with it (``real+syn:gvae``) names its model explicitly.
    """

    conditions: tuple[str, ...] = (
        "real",
        "real+classical",
        "real+syn",
        "real+classical+syn",
        "syn",
    )
    models: tuple[str, ...] = ("gvae", "vae", "wgan_gp", "vae_gan")
    fractions: tuple[float, ...] = (1.0, 0.25)
    min_patients: int = Field(2, ge=0, description="smallest training subset, in patients")
    subset_seed: int = Field(0, description="seed of the patient subsets (shared by generators)")
    seeds: tuple[int, ...] = (0, 1, 2)
    synthetic_ratio: float = Field(
        1.0, gt=0, description="synthetic slices per real training slice of the run"
    )
    # Measured on the 43-patient Pancreas-CT slice set at 64 px: with lr 3e-3 a run needs ~3000
    # steps before Dice leaves 0 (the network first settles on all-background); with 1e-2 and
    # a constant rate 600 steps reach test Dice 0.15-0.23 for every seed tried. A cosine decay
    # over so few steps lowers the rate before that escape and can leave Dice at 0.
    steps: int = Field(600, ge=1, description="optimizer steps per run, whatever the data size")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-2, gt=0, description="Adam learning rate")
    schedule: Literal["cosine", "constant"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    unet: UNetParams = UNetParams()
    augment: ClassicalAugmentParams = ClassicalAugmentParams()
    # 600 steps at 64 px on two idle CPU cores: 24 s with 2 threads, 34 s with 1 (the
    # augmentation itself always runs on one thread, see pipeline.augment.segment.train).
    threads: int | None = Field(2, ge=1, description="torch CPU threads; null = all")
    # Runs of the grid at once, each in its own process with `threads` threads. On two cores
    # 2 x 1 thread beat 1 x 2 threads: 6 runs of 200 steps at 64 px with the `full` UNet took
    # 67 s against 87 s, process start-up included. Results depend on `threads`, never on this
    # (each run is seeded).
    workers: int = Field(1, ge=1, description="processes running grid runs at once")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = Field(64, ge=1)
    n_boot: int = Field(10000, ge=100, description="bootstrap resamples of every CI")
    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of every CI")
    boot_seed: int = Field(0, description="seed of the bootstrap resampling")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions must lie in (0, 1], got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"fractions must not repeat, got {list(v)}")
        return v

    @field_validator("seeds", "conditions")
    @classmethod
    def _non_empty_unique(cls, v: tuple) -> tuple:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"need a non-empty list without repeats, got {list(v)}")
        return v

    @field_validator("conditions")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            kind, _, model = name.partition(":")
            if kind not in CONDITION_KINDS or (model and not kind.endswith("syn")):
                raise ValueError(
                    f"unknown condition '{name}' (kinds: {', '.join(CONDITION_KINDS)}; "
                    "the syn kinds may name a model, e.g. real+syn:gvae)"
                )
        return v


@dataclass(frozen=True)
class Condition:
    """One training recipe: which data, with or without classical augmentation."""

    name: str
    real: bool
    classical: bool
    model: str | None  # the synthetic model, None when no synthetic data is used


def parse_condition(name: str) -> Condition:
    """``"real+classical+syn:gvae"`` -> ``Condition``; ``ValueError`` for an unknown name."""
    kind, _, model = name.partition(":")
    needs_model = kind.endswith("syn")
    if kind not in CONDITION_KINDS or needs_model != bool(model):
        raise ValueError(
            f"unknown condition '{name}' (valid: real, real+classical, real+syn:<model>, "
            "real+classical+syn:<model>, syn:<model>)"
        )
    return Condition(name, kind != "syn", "classical" in kind, model or None)


def expand_conditions(conditions: Iterable[str], models: Iterable[str]) -> list[Condition]:
    """Expand the syn kinds named without a model over ``models``; keep the given order."""
    out: list[str] = []
    for name in conditions:
        if name.endswith("syn") and ":" not in name:
            out += [f"{name}:{m}" for m in models]
        else:
            out.append(name)
    if len(set(out)) != len(out):
        raise ValueError(f"segment.conditions expands to repeated conditions: {out}")
    return [parse_condition(n) for n in out]


def synthetic_models(conditions: Iterable[str], models: Iterable[str]) -> set[str]:
    """The generators whose synthetic sets the grid's conditions read (``expand_conditions``)."""
    return {c.model for c in expand_conditions(conditions, models) if c.model}
