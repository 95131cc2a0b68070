"""The masks a mask-conditioned generator draws for, read from disk (``gvae generate``).

``real`` and ``deformed`` start from the training slices of the generator's OWN patients: the
slices folder and the case ids its run recorded in ``data.json`` (a low-data generator trained
on two patients never sees a third patient's mask). ``generated`` reads the pairs of a joint
model's ``gvae generate`` output (mask first, then image). The pure cores are
``pipeline.augment.masks``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.augment.masks import MaskSet, deform_masks, real_masks
from pipeline.errors import StageError
from pipeline.io.shards import load_slices, read_index
from pipeline.params.ct import GenerateParams


def training_pairs(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of the train-split slices of the run's patients (``record["cases"]``)."""
    slices = record.get("slices")
    cases = record.get("cases")
    if not slices or not cases:
        raise StageError("the run's data.json names no slices folder or training cases")
    image, mask, meta = load_slices(slices, "train")
    keep = np.isin(meta["case_id"], list(cases))
    missing = sorted(set(cases) - set(meta["case_id"][keep].tolist()))
    if missing:
        raise StageError(f"{slices}: train split has no slices of the run's case(s) {missing}")
    return image[keep], mask[keep]


def generated_pairs(masks_from: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of a joint model's generated set; ``StageError`` naming the folder."""
    try:
        index = read_index(masks_from)
    except ValueError as exc:
        raise StageError(f"generate.masks: generated: {exc}") from None
    source = index.get("source") or {}
    if not source.get("model") or "synthetic" not in index.get("splits", {}):
        raise StageError(f"{masks_from}: not a `gvae generate` output (no synthetic split)")
    if source.get("conditional"):
        raise StageError(
            f"{masks_from}: masks of a mask-conditioned model ({source['model']}); "
            "generate.masks: generated takes a joint model's set"
        )
    if index.get("size") != size:
        raise StageError(f"{masks_from}: {index.get('size')}-px pairs, the generator draws {size}")
    image, mask, _ = load_slices(masks_from, "synthetic")
    return image, mask


def load_conditions(
    params: GenerateParams, record: dict, size: int, seed: int, masks_from: Path | None
) -> MaskSet:
    """The ``params.masks`` mask set of a conditional run (module docstring); every refusal is
    a ``StageError`` naming the setting or the folder."""
    if params.masks == "generated":
        if masks_from is None:
            raise StageError(
                "generate.masks is 'generated' but no joint model's set was given "
                "(`gvae generate --masks-from DIR`)"
            )
        image, mask = generated_pairs(masks_from, size)
        where = f"{masks_from}: the joint model's set"
    else:
        if masks_from is not None:
            raise StageError(f"--masks-from is for generate.masks: generated, not {params.masks!r}")
        image, mask = training_pairs(record)
        where = f"{record.get('slices')}: the run's training slices"
    try:
        if params.masks == "deformed":
            return deform_masks(image, mask, params.deform, seed)
        return real_masks(image, mask)
    except ValueError as exc:
        raise StageError(f"{where}: {exc}") from None
