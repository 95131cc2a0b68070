"""Params section of the segmentation experiment (``gvae segment``).

Registered in ``pipeline.params.loader.SECTIONS`` as ``segment``. The question the section
configures:
does adding synthetic labelled slices raise pancreas Dice on unseen real patients, and how does
that change as fewer real training patients are available? Defaults are sized for a 2-core CPU
at 64 px (a tiny UNet, a few hundred optimizer steps); GPU runs raise ``steps`` and ``unet``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.frozen import Frozen

# Mixing controls: classical augmentation plus CarveMix (Zhang et al. 2021) or CutMix (Yun et
# al. 2019) between the run's own real slices; the bar a generator has to clear.
CONTROL_KINDS = ("real+classical+carvemix", "real+classical+cutmix")
# Condition kinds; the ``syn`` kinds take a model and a recipe, ``real+syn:gvae/filter`` (see
# pipeline.augment.segment.experiment).
CONDITION_KINDS = (
    "real", "real+classical", *CONTROL_KINDS, "real+syn", "real+classical+syn", "syn",
)  # fmt: skip
# How a synthetic source is used (pipeline.augment.segment.recipes): ``mix`` (the default, no
# suffix) adds it to the real slices; ``pretrain`` trains on it, then fine-tunes on the real
# slices; ``filter`` keeps the slices a real-trained UNet segments at >= filter.min_dice.
RECIPES = ("mix", "pretrain", "filter")


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


class MixingParams(Frozen):
    """The CarveMix and CutMix controls (``real+classical+carvemix`` / ``+cutmix``).

    A share ``prob`` of the training samples gets a second training slice of the run's own
    patients pasted in before the classical augmentation: CarveMix (Zhang et al. 2021) carves
    the source's pancreas with a margin of ``carve_margin_px`` pixels (drawn per sample, both
    ends included); CutMix (Yun et al. 2019) cuts a box whose area share ``1 - lam`` comes from
    ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``. Labels travel with the pasted pixels.
    """

    prob: float = Field(0.5, ge=0, le=1, description="share of samples that get a paste")
    # 2-8 px at 128 px is the margin of the control quoted in issue 28 (+0.08 Dice at 3
    # patients); 1-4 px is the same distance in mm at 64 px.
    carve_margin_px: tuple[int, int] = (1, 4)
    cutmix_alpha: float = Field(1.0, gt=0, description="Beta(a, a) of CutMix's kept share")

    @field_validator("carve_margin_px")
    @classmethod
    def _margin(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 0 or v[0] > v[1]:
            raise ValueError(f"need 0 <= low <= high pixels, got {list(v)}")
        return v


class PretrainParams(Frozen):
    """The ``pretrain`` recipe: synthetic-only steps first, then the real slices.

    The run takes ``segment.steps`` optimizer steps in all, as a ``mix`` run does; the first
    ``round(synthetic_share * steps)`` see only synthetic slices (Shin et al. 2018).
    """

    synthetic_share: float = Field(0.5, gt=0, lt=1, description="share of steps on synthetic")


class FilterParams(Frozen):
    """The ``filter`` recipe: keep synthetic slices a real-trained UNet segments well.

    A slice is kept when the UNet of the fraction's real patients reaches Dice >= ``min_dice``
    against the slice's own mask (DiffAug's validation by a segmenter; Konz et al. 2024's mask
    faithfulness as a per-slice gate).
    """

    min_dice: float = Field(0.3, ge=0, le=1, description="keep slices at or above this Dice")


class SegmentParams(Frozen):
    """Grid of segmentation runs: conditions x training fractions x seeds, and how each trains.

    ``conditions`` lists condition kinds (``real``, ``real+classical``, the controls
    ``real+classical+carvemix`` and ``real+classical+cutmix``, ``real+syn``,
    ``real+classical+syn``, ``syn``); a ``syn`` kind without ``:model`` expands over ``models``,
    one with it (``real+syn:gvae``) names its model explicitly; a ``/recipe`` suffix (``mix``,
    ``pretrain``, ``filter``) says how the synthetic slices are used, ``mix`` when absent.
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
    # Small subsets vary most from seed to seed: e.g. {0.1: [0, 1, 2, 3, 4]} runs five seeds at
    # that fraction and `seeds` at the others.
    seeds_by_fraction: dict[float, tuple[int, ...]] = Field(
        default_factory=dict, description="fraction -> its seeds, instead of `seeds`"
    )
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
    mixing: MixingParams = MixingParams()
    pretrain: PretrainParams = PretrainParams()
    filter: FilterParams = FilterParams()
    # 600 steps at 64 px on two idle CPU cores: 24 s with 2 threads, 34 s with 1 (the
    # augmentation itself always runs on one thread, see pipeline.augment.segment.train).
    threads: int | None = Field(2, ge=1, description="torch CPU threads; null = all")
    # Runs of the grid at once, each in its own process with `threads` threads. On two cores
    # 2 x 1 thread beat 1 x 2 threads: 6 runs of 200 steps at 64 px with the `full` UNet took
    # 67 s against 87 s, process start-up included. Results depend on `threads`, never on this
    # (each run is seeded).
    workers: int = Field(1, ge=1, description="processes running grid runs at once")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Speed switches of the training step (pipeline.augment.segment.train; figures in
    # docs/performance.md, segment_throughput.py). Each one that changes a run's numbers is in
    # the grid's fingerprint (pipeline.augment.segment.grid.fingerprint) once off its old value.
    # `batched`: the same classical augmentation (same parameter distributions, other random
    # draws) on the whole flagged sub-batch in torch, one grid_sample per batch instead of
    # MONAI's per-sample pipeline (pipeline.augment.segment.batched_augment).
    augment_backend: Literal["monai", "batched"] = Field(
        "batched", description="classical augmentation: MONAI per sample, or batched torch"
    )
    channels_last: bool = Field(True, description="NHWC UNet weights and batches")
    compile: bool = Field(False, description="torch.compile the UNet for training")
    # auto: bf16 autocast on CUDA, fp32 on a CPU; bf16 also on a CPU with native bf16 only
    # (elsewhere fp32 and a warning: emulated bf16 measured 11x slower on an AVX2 CPU).
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="training autocast")
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

    @model_validator(mode="after")
    def _seeds_by_fraction(self) -> SegmentParams:
        unknown = sorted(set(self.seeds_by_fraction) - set(self.fractions))
        if unknown:
            raise ValueError(
                f"seeds_by_fraction names fractions {unknown} that are not in fractions "
                f"{list(self.fractions)}"
            )
        for f, seeds in self.seeds_by_fraction.items():
            if not seeds or len(set(seeds)) != len(seeds):
                raise ValueError(
                    f"seeds_by_fraction[{f}]: need a non-empty list without repeats, "
                    f"got {list(seeds)}"
                )
        return self

    def seeds_of(self, fraction: float) -> tuple[int, ...]:
        """The seeds run at ``fraction``: its ``seeds_by_fraction`` entry, else ``seeds``."""
        return self.seeds_by_fraction.get(fraction, self.seeds)

    @field_validator("conditions")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            parse_condition(name, model_optional=True)
        return v

    @model_validator(mode="after")
    def _pretrain_steps(self) -> SegmentParams:
        if any(parse_condition(c, True).recipe == "pretrain" for c in self.conditions):
            pretrain_steps(self.steps, self.pretrain.synthetic_share)
        return self


def pretrain_steps(steps: int, share: float) -> tuple[int, int]:
    """``(synthetic, real)`` optimizer steps of a ``pretrain`` run, ``steps`` in all."""
    first = math.floor(share * steps + 0.5)
    if not 0 < first < steps:
        raise ValueError(
            f"segment.pretrain.synthetic_share={share} of segment.steps={steps} leaves a phase "
            "without steps; each of the synthetic and the real phase needs at least one"
        )
    return first, steps - first


@dataclass(frozen=True)
class Condition:
    """One training recipe: which data, with or without classical augmentation.

    ``control`` is ``carvemix``/``cutmix`` for the mixing controls, else None; ``recipe`` says
    how the synthetic slices of ``model`` are used (``mix`` when there are none).
    """

    name: str
    real: bool
    classical: bool
    model: str | None  # the synthetic model, None when no synthetic data is used
    recipe: str = "mix"
    control: str | None = None


_VALID = (
    "valid: real, real+classical, real+classical+carvemix, real+classical+cutmix, "
    "real+syn:<model>, real+classical+syn:<model>, syn:<model>, each syn kind optionally "
    f"with /<recipe>, recipes {', '.join(RECIPES)}"
)


def parse_condition(name: str, model_optional: bool = False) -> Condition:
    """``"real+classical+syn:gvae/filter"`` -> ``Condition``; ``ValueError`` for a bad name.

    An explicit ``/mix`` is dropped from the returned name, so ``real+syn:gvae/mix`` and
    ``real+syn:gvae`` are one condition with one name (the name results were filed under).
    ``model_optional`` accepts a syn kind without ``:model`` (a params entry that
    ``expand_conditions`` expands over ``segment.models``); the returned ``model`` is then None.
    """
    base, slash, recipe = name.partition("/")
    kind, colon, model = base.partition(":")
    is_syn = kind.endswith("syn")
    if kind not in CONDITION_KINDS or (colon and not (is_syn and model)):
        raise ValueError(f"unknown condition '{name}' in segment.conditions ({_VALID})")
    if is_syn and not model and not model_optional:
        raise ValueError(f"unknown condition '{name}': a syn kind needs its model ({_VALID})")
    if slash and not is_syn:
        raise ValueError(f"condition '{name}': only the syn kinds take a recipe ({_VALID})")
    if slash and recipe not in RECIPES:
        raise ValueError(
            f"condition '{name}' in segment.conditions: unknown recipe '{recipe}' "
            f"(recipes: {', '.join(RECIPES)})"
        )
    recipe = recipe or "mix"
    if kind == "syn" and recipe == "pretrain":
        raise ValueError(
            f"condition '{name}': pretrain fine-tunes on real slices, and the syn kind has none "
            "(use real+syn or real+classical+syn)"
        )
    canonical = base if recipe == "mix" else f"{base}/{recipe}"
    control = kind.rpartition("+")[2] if kind in CONTROL_KINDS else None
    return Condition(canonical, kind != "syn", "classical" in kind, model or None, recipe, control)


def expand_conditions(conditions: Iterable[str], models: Iterable[str]) -> list[Condition]:
    """Expand the syn kinds named without a model over ``models``; keep the given order.

    ``real+classical+syn/filter`` becomes ``real+classical+syn:<m>/filter`` for every model.
    """
    models = list(models)
    out: list[Condition] = []
    for name in conditions:
        base, slash, recipe = name.partition("/")
        if base.endswith("syn") and ":" not in base:
            out += [parse_condition(f"{base}:{m}{slash}{recipe}") for m in models]
        else:
            out.append(parse_condition(name))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"segment.conditions expands to repeated conditions: {names}")
    return out


def synthetic_models(conditions: Iterable[str], models: Iterable[str]) -> set[str]:
    """The generators whose synthetic sets the grid's conditions read (``expand_conditions``)."""
    return {c.model for c in expand_conditions(conditions, models) if c.model}
