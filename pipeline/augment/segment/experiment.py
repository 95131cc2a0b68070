"""The segmentation experiment: conditions x training fractions x seeds, without leakage.

One *run* trains a UNet (``pipeline.augment.segment.train``) on one condition's training set at one
fraction of the real training patients with one seed, and scores every test patient. Conditions:

* ``real``                    real training slices only;
* ``real+classical``          the same, each sample through the classical MONAI augmentation;
* ``real+syn:<m>``            real plus ``synthetic_ratio * n_real`` synthetic pairs of model m;
* ``real+classical+syn:<m>``  both, classical augmentation on real and synthetic samples;
* ``syn:<m>``                 synthetic only, ``max(synthetic_ratio, 1) * n_real`` pairs;
* ``real+classical+carvemix``, ``real+classical+cutmix``: the mixing controls, real slices with
  CarveMix / CutMix pastes between them (``pipeline.augment.segment.mixing``);
* ``<syn kind>:<m>/<recipe>``  how the synthetic slices are used: ``mix`` (the default, the
  lines above), ``pretrain`` or ``filter`` (``pipeline.augment.segment.recipes``).

Every run takes the same number of optimizer steps, so conditions differ in what they see, not
in how long they train. The real subset of a fraction is ``training_subset`` (nested, seeded,
the same for every condition and seed; the generators import it to train per subset). The val
split is never used for training or model selection; scores come from the test split only.

Synthetic folders are given per model, optionally per fraction (``MODEL@FRACTION=DIR``): a
generator trained on the 25% subset must only augment the 25% runs, or the 25% regime would
see patients it does not have. A folder without ``@FRACTION`` serves every fraction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.shards import INDEX_NAME
from pipeline.params.segment import (
    Condition,
    SegmentParams,
    expand_conditions,
)

SYN_SPLIT = "synthetic"
SYN_PREFIX = "syn-"
HELD_OUT = ("val", "test")


def training_subset(
    train_cases: Iterable[str], fraction: float, subset_seed: int, min_patients: int
) -> list[str]:
    """Return the sorted case ids of the first ``n`` patients of a seeded permutation.

    ``n = max(min_patients, round(fraction * N))`` of the ``N`` training patients. The
    permutation depends only on the sorted ids and ``subset_seed``, so subsets are nested
    (a smaller fraction's patients are inside every larger one's) and identical for every
    condition, seed and generator that calls this function.
    """
    cases = sorted(set(train_cases))
    if not cases:
        raise ValueError("the train split has no patient")
    if not 0 < fraction <= 1:
        raise ValueError(f"segment.fractions: {fraction} is not in (0, 1]")
    if min_patients > len(cases):
        raise ValueError(
            f"segment.min_patients={min_patients} but the train split has {len(cases)} patients"
        )
    n = max(min_patients, math.floor(fraction * len(cases) + 0.5))
    if n == 0:
        raise ValueError(
            f"segment.fractions: {fraction} of {len(cases)} training patients is 0 patients "
            "(raise the fraction or segment.min_patients)"
        )
    order = np.random.default_rng(subset_seed).permutation(len(cases))
    return sorted(cases[i] for i in order[:n])


def check_leakage(train_cases: Iterable[str], held_out: Mapping[str, Iterable[str]]) -> None:
    """Raise ``ValueError`` if any case used for training is in a held-out split."""
    used = set(train_cases)
    for split, cases in held_out.items():
        leaked = sorted(used & set(cases))
        if leaked:
            raise ValueError(f"leakage: {split} patient(s) {leaked} are in a training set")


def _strings(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return {obj}
    if isinstance(obj, Mapping):
        return set().union(*(_strings(v) for v in obj.values()), set())
    if isinstance(obj, list | tuple):
        return set().union(*(_strings(v) for v in obj), set())
    return set()


def check_synthetic(
    folder: Path, index: Mapping, case_ids: np.ndarray, held_out: Mapping[str, Iterable[str]]
) -> None:
    """Check a synthetic folder: ``syn-`` case ids, no held-out case named in its ``source``."""
    bad = sorted({c for c in np.asarray(case_ids).tolist() if not c.startswith(SYN_PREFIX)})
    if bad:
        raise ValueError(f"{folder}: synthetic case ids must start with '{SYN_PREFIX}', got {bad}")
    named = _strings(index.get("source") or {})
    for split, cases in held_out.items():
        leaked = sorted(named & set(cases))
        if leaked:
            raise ValueError(
                f"{folder / INDEX_NAME}: source names {split} patient(s) {leaked}; a generator "
                "must never see held-out patients"
            )


def parse_synthetic_args(items: Iterable[str]) -> dict[tuple[str, float | None], Path]:
    """``["gvae=DIR", "vae@0.25=DIR"]`` -> ``{("gvae", None): DIR, ("vae", 0.25): DIR}``."""
    out: dict[tuple[str, float | None], Path] = {}
    for item in items:
        key, sep, folder = item.partition("=")
        model, at, frac = key.partition("@")
        try:
            fraction = float(frac) if at else None
        except ValueError:
            fraction = math.nan
        if not sep or not folder or not model or (at and not 0 < fraction <= 1):
            raise ValueError(
                f"--synthetic {item!r}: expected MODEL=DIR or MODEL@FRACTION=DIR, "
                "FRACTION in (0, 1]"
            )
        if (model, fraction) in out:
            raise ValueError(f"--synthetic {item!r}: given twice")
        out[(model, fraction)] = Path(folder)
    return out


def synthetic_folder(
    folders: Mapping[tuple[str, float | None], Path], model: str, fraction: float
) -> Path:
    """The folder serving ``model`` at ``fraction``: exact fraction first, else the model-wide."""
    for (m, f), folder in folders.items():
        if m == model and f is not None and math.isclose(f, fraction):
            return folder
    if (model, None) in folders:
        return folders[(model, None)]
    raise ValueError(
        f"no synthetic folder for model '{model}' at fraction {fraction}: pass "
        f"--synthetic {model}=DIR (every fraction) or --synthetic {model}@{fraction}=DIR"
    )


def run_name(condition: str, fraction: float, seed: int) -> str:
    """File stem of a run: ``real+syn-gvae__f0.25__s1``, ``real+syn-gvae-filter__f1.0__s0``.

    ``:`` is not portable in file names and ``/`` separates folders: both become ``-``.
    """
    stem = condition.replace(":", "-").replace("/", "-")
    return f"{stem}__f{float(fraction)}__s{seed}"


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    condition: Condition
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.condition.name, self.fraction, self.seed)


def plan_runs(params: SegmentParams) -> list[RunSpec]:
    """Every run of the grid, ordered fraction -> condition -> seed (``seeds_of`` the fraction)."""
    conditions = expand_conditions(params.conditions, params.models)
    return [
        RunSpec(c, f, s) for f in params.fractions for c in conditions for s in params.seeds_of(f)
    ]


@dataclass
class Dataset:
    """Real train and test slices of a slices folder, with the split's case lists."""

    train_image: np.ndarray
    train_mask: np.ndarray
    train_case: np.ndarray
    test_image: np.ndarray
    test_mask: np.ndarray
    test_case: np.ndarray
    pixel_mm: float
    size: int
    splits: dict[str, list[str]]
    index: dict


def held_out_cases(data: Dataset) -> dict[str, list[str]]:
    """The val and test case lists of the split (the cases no training set may contain)."""
    return {s: data.splits.get(s, []) for s in HELD_OUT}


@dataclass
class SyntheticSet:
    """The samples of one synthetic folder (split ``synthetic``)."""

    folder: Path
    image: np.ndarray
    mask: np.ndarray
    case_id: np.ndarray
    index: dict


@dataclass
class TrainingSet:
    """What one run trains on; ``cases`` are the case ids of the samples actually used.

    ``synthetic`` flags the synthetic samples (the ``pretrain`` recipe trains on them first);
    ``case_id`` is every sample's case.
    """

    image: np.ndarray
    mask: np.ndarray
    augment: np.ndarray
    synthetic: np.ndarray
    case_id: np.ndarray
    cases: list[str]
    patients: list[str]
    n_real: int
    n_synthetic: int


def n_synthetic(condition: Condition, n_real: int, ratio: float) -> int:
    """Synthetic samples of a run: ``ratio * n_real``; synthetic-only gets at least ``n_real``."""
    n = max(1, math.floor(ratio * n_real + 0.5))
    return n if condition.real else max(n, n_real)


def build_training_set(
    spec: RunSpec, data: Dataset, syn: SyntheticSet | None, params: SegmentParams
) -> TrainingSet:
    """Assemble the samples of one run (pure: the inputs are not modified)."""
    subset = training_subset(
        data.splits["train"], spec.fraction, params.subset_seed, params.min_patients
    )
    sel = np.isin(data.train_case, subset)
    if not sel.any():
        raise ValueError(f"fraction {spec.fraction}: the patients {subset} have no slice")
    n_real = int(sel.sum())
    images, masks, cases = [], [], []
    if spec.condition.real:
        images.append(data.train_image[sel])
        masks.append(data.train_mask[sel])
        cases.append(data.train_case[sel])
    n_syn = 0
    if spec.condition.model is not None:
        if syn is None:
            raise ValueError(f"condition {spec.condition.name} needs synthetic data")
        n_syn = n_synthetic(spec.condition, n_real, params.synthetic_ratio)
        # The run's seed draws the synthetic samples: with and without classical augmentation
        # a seed sees the same synthetic pairs, so that comparison stays paired. A folder
        # smaller than the request is drawn with replacement (the run record says so).
        pick = np.random.default_rng(spec.seed).choice(
            len(syn.image), n_syn, replace=n_syn > len(syn.image)
        )
        images.append(syn.image[pick])
        masks.append(syn.mask[pick])
        cases.append(syn.case_id[pick])
    case_arr = np.concatenate(cases)
    real_used = case_arr[~np.char.startswith(case_arr.astype(str), SYN_PREFIX)]
    return TrainingSet(
        image=np.concatenate(images),
        mask=np.concatenate(masks),
        augment=np.full(len(case_arr), spec.condition.classical),
        synthetic=np.arange(len(case_arr)) >= (n_real if spec.condition.real else 0),
        case_id=case_arr,
        cases=sorted(set(case_arr.tolist())),
        patients=sorted(set(real_used.tolist())) if spec.condition.real else [],
        n_real=n_real if spec.condition.real else 0,
        n_synthetic=n_syn,
    )


DATA_JSON = "data.json"


def fraction_dirname(fraction: float) -> str:
    """Sub-folder of one training-patient fraction in a per-model CT folder: ``f1.0``, ``f0.25``."""
    return f"f{float(fraction)}"
