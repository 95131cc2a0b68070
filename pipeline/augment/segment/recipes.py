"""How a run uses its data: the usage recipes of a synthetic source and the mixing controls.

* ``mix`` (the default, a condition without ``/recipe``): synthetic slices added to the real
  ones at ``segment.synthetic_ratio``, one training phase (most positive studies; Med-DDPM 2:1).
* ``pretrain``: ``round(pretrain.synthetic_share * steps)`` steps on the synthetic slices only,
  then the rest on the real slices, ``segment.steps`` in all like ``mix`` (Shin et al. 2018;
  synthetic pretraining, then fine-tuning on real data).
* ``filter``: only the synthetic slices on which a UNet trained on the fraction's real patients
  reaches Dice >= ``filter.min_dice`` against the slice's own mask are drawn from (DiffAug's
  segmenter validation; mask faithfulness, Konz et al. 2024), then used as in ``mix``.
* ``real+classical+carvemix`` / ``+cutmix``: one phase over the real slices with a ``Mixer``
  (``pipeline.augment.segment.mixing``) whose sources are the same real slices.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.augment.segment.experiment import (
    Dataset,
    RunSpec,
    SyntheticSet,
    TrainingSet,
    build_training_set,
    check_leakage,
    held_out_cases,
)
from pipeline.augment.segment.mixing import Mixer, build_mixer
from pipeline.augment.segment.train import Phase, predict, slice_dice, train_segmenter
from pipeline.params.segment import SegmentParams, parse_condition, pretrain_steps

# (fraction, seed) -> the network of that fraction's `real` run, kept while the grid is at that
# fraction so the filter conditions of every model share it.
Networks = MutableMapping[tuple[float, int], torch.nn.Module]


def real_spec(spec: RunSpec) -> RunSpec:
    """The ``real`` run at ``spec``'s fraction and seed: whose network the filter uses."""
    return RunSpec(parse_condition("real"), spec.fraction, spec.seed)


def filter_network(
    spec: RunSpec, data: Dataset, params: SegmentParams, networks: Networks | None = None
) -> tuple[torch.nn.Module, list[str], str]:
    """The UNet that scores the synthetic slices of a ``filter`` run.

    It is the fraction's ``real`` run's network: trained on the real slices of that fraction's
    own training patients only (``training_subset``), with the run's seed and every setting of
    the ``real`` condition. When the grid trained that ``real`` run in this process, its network
    is reused from ``networks``; otherwise (no ``real`` condition, a resumed run, another
    worker's shard) one is trained here with the same training set, settings and seed, which
    on the same device and thread count gives the same weights. The leakage guard checks its
    training patients first. Returns ``(network, its patients, "reused" | "trained")``.
    """
    ts = build_training_set(real_spec(spec), data, None, params)
    check_leakage(ts.cases, held_out_cases(data))
    key = (spec.fraction, spec.seed)
    if networks is not None and key in networks:
        return networks[key], ts.patients, "reused"
    model = train_segmenter(ts.image, ts.mask, ts.augment, params, spec.seed).model
    if networks is not None:
        networks[key] = model
    return model, ts.patients, "trained"


def score_synthetic(
    model: torch.nn.Module, image: np.ndarray, mask: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Dice ``(N,)`` of ``model``'s prediction on each synthetic image against its own mask."""
    return slice_dice(predict(model, image, batch_size), mask)


@dataclass(frozen=True)
class FilterResult:
    """What a filter kept: the kept indices of the synthetic pool and every slice's Dice."""

    keep: np.ndarray
    dice: np.ndarray
    min_dice: float

    def record(self) -> dict:
        """The run record's ``filter`` entry (counts, kept share, Dice quantiles)."""
        return {
            "min_dice": self.min_dice,
            "scored": len(self.dice),
            "kept": len(self.keep),
            "kept_share": len(self.keep) / len(self.dice),
            "dice_median": float(np.median(self.dice)),
            "dice_max": float(self.dice.max()),
        }


def select_by_dice(dice: np.ndarray, min_dice: float, what: str) -> FilterResult:
    """Keep the slices with ``dice >= min_dice``; ``ValueError`` naming the setting if none.

    ``what`` names the synthetic set in the error. Returns the kept indices in pool order.
    """
    dice = np.asarray(dice, np.float64)
    keep = np.flatnonzero(dice >= min_dice)
    if not len(keep):
        best = f"{dice.max():.3f}" if len(dice) else "none"
        raise ValueError(
            f"segment.filter.min_dice={min_dice}: the filter kept none of the {len(dice)} "
            f"synthetic slices scored ({what}); the best Dice seen was {best}. Lower "
            "segment.filter.min_dice or drop the filter condition"
        )
    return FilterResult(keep, dice, min_dice)


def filter_synthetic(
    spec: RunSpec,
    data: Dataset,
    syn: SyntheticSet,
    params: SegmentParams,
    networks: Networks | None = None,
) -> tuple[SyntheticSet, dict]:
    """The ``filter`` recipe: return the kept part of ``syn`` and the record's ``filter`` entry.

    Every slice of the folder is scored by :func:`filter_network`'s UNet; the run then draws
    its ``synthetic_ratio * n_real`` slices from the kept ones as ``mix`` does.
    """
    model, patients, how = filter_network(spec, data, params, networks)
    dice = score_synthetic(model, syn.image, syn.mask, params.eval_batch_size)
    what = f"{syn.folder}, condition {spec.condition.name}, f={spec.fraction:g}, seed {spec.seed}"
    result = select_by_dice(dice, params.filter.min_dice, what)
    k = result.keep
    kept = replace(syn, image=syn.image[k], mask=syn.mask[k], case_id=syn.case_id[k])
    return kept, {**result.record(), "network": how, "patients": patients}


def training_phases(
    spec: RunSpec, ts: TrainingSet, params: SegmentParams
) -> tuple[list[Phase], Mixer | None]:
    """The phases of one run (see the module doc) and its mixer (None but for the controls)."""
    cond = spec.condition
    if cond.recipe == "pretrain":
        syn_steps, real_steps = pretrain_steps(params.steps, params.pretrain.synthetic_share)
        s, r = ts.synthetic, ~ts.synthetic
        return [
            Phase("synthetic", ts.image[s], ts.mask[s], ts.augment[s], syn_steps),
            Phase("real", ts.image[r], ts.mask[r], ts.augment[r], real_steps),
        ], None
    mixer = None
    if cond.control is not None:
        # A control has no synthetic sample: its sources are the run's real slices, the
        # fraction's own patients.
        mixer = build_mixer(cond.control, ts.image, ts.mask, ts.case_id, params.mixing, spec.seed)
    return [Phase("train", ts.image, ts.mask, ts.augment, params.steps, mixer)], mixer
