"""The privacy gate of the export: near-copies of training slices do not leave the project.

A synthetic slice that is a near-copy of a real training slice would carry that patient's
anatomy into a PACS under a synthetic label. The gate reuses the memorization check of
``gvae ct-quality`` (``pipeline.augment.quality.memorization``): the threshold is the ``quantile``
of
the distances from unseen real slices (other patients: the test split, or the validation split
when there is no test split) to their nearest training slice, and a synthetic slice at or below
it is a near-copy when also far closer to that slice than to the next training slices (the
relative test, ``MemorizationParams.ratio``). Flagged slices are refused (skipped, with a
message naming each) unless the user allows them explicitly; they are then exported and marked
in the receipt.

``check_reference`` and ``select_slices`` are pure; ``near_copy_gate`` only computes.
``select_slices`` also passes over the slices the plausibility gate refuses
(``pipeline.export.plausibility``), so both gates fill the set the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.io.shards import same_grid
from pipeline.params.quality import MemorizationParams


@dataclass(frozen=True)
class GateResult:
    """Per synthetic slice: near-copy flag, distance to and index of its nearest training slice."""

    threshold: float
    calibration: str  # the split whose real slices set the threshold ("test" or "val")
    flags: np.ndarray  # bool (M,)
    distances: np.ndarray  # float (M,)
    relative: np.ndarray  # float (M,): d1 / mean distance to the nearest training slices
    nn_index: np.ndarray  # int (M,), into the training slices


@dataclass(frozen=True)
class Selection:
    """Which synthetic slices go into the set and which the gate refused, as indices."""

    chosen: list[int]
    refused: list[int]  # near-copies passed over to fill the set (refused)
    allowed: list[int]  # near-copies exported because near-copies were allowed
    implausible_refused: list[int] = field(default_factory=list)  # implausible masks passed over
    implausible_allowed: list[int] = field(default_factory=list)  # exported: --allow-implausible


def check_reference(synthetic: dict, real: dict, trained_on: list[str] | None, where: str) -> None:
    """The real slices must be the generator's training data, on the synthetic slices' grid.

    ``synthetic`` and ``real`` are the ``meta`` dicts of ``load_slices`` (``real`` of the
    train split). ``trained_on``: the cases the generator saw (the synthetic index's
    ``source.trained_on``); every one must be in the real train split, otherwise the gate
    would compare against the wrong patients. ``ValueError`` naming ``where`` otherwise.
    """
    if not same_grid(real, synthetic):
        raise ValueError(
            f"{where}: size {real['size']}, pixel_mm {real['pixel_mm']}, window "
            f"{real['window']} differ from the synthetic set's size {synthetic['size']}, "
            f"pixel_mm {synthetic['pixel_mm']}, window {synthetic['window']}: not the slices "
            "the generator was trained on"
        )
    missing = sorted(set(trained_on or []) - {str(c) for c in real["case_id"]})
    if missing:
        raise ValueError(
            f"{where}: the generator was trained on {len(missing)} case(s) that are not in this "
            "folder's train split: not the slices the generator was trained on"
        )


def near_copy_gate(
    synthetic: np.ndarray,
    train: np.ndarray,
    unseen: dict[str, np.ndarray],
    memo: MemorizationParams,
    batch_size: int,
) -> GateResult:
    """Flag near-copies among ``synthetic`` (M, 1, S, S) against the ``train`` slices.

    ``unseen`` maps split names to real slices of patients the generator never saw; the
    first non-empty of ``test`` then ``val`` calibrates the threshold; ``memo`` holds the
    check's settings (quantile, downsample, ratio, neighbours). ``ValueError`` when
    there is no training slice or no unseen real slice to calibrate with.
    """
    from pipeline.augment.quality.memorization import find_near_copies, near_copy_threshold

    if len(train) == 0:
        raise ValueError("the real train split is empty: nothing to compare against")
    split = next((s for s in ("test", "val") if len(unseen.get(s, ())) > 0), None)
    if split is None:
        raise ValueError(
            "no real test or val slices to calibrate the near-copy threshold with (it is a "
            "quantile of unseen real slices' distances to the training slices)"
        )
    q, down = memo.quantile, memo.downsample
    threshold = near_copy_threshold(unseen[split], train, q, batch_size, down)
    found = find_near_copies(
        synthetic, train, threshold, batch_size, down, memo.ratio, memo.neighbours
    )
    return GateResult(
        threshold=float(found["threshold"]),
        calibration=split,
        flags=np.asarray(found["flags"], bool),
        distances=np.asarray(found["distances"], float),
        relative=np.asarray(found["relative"], float),
        nn_index=np.asarray(found["nn_index"], int),
    )


def select_slices(
    flags: np.ndarray | None,
    available: int,
    n: int,
    allow: bool,
    implausible: np.ndarray | None = None,
    allow_implausible: bool = False,
) -> Selection:
    """The first ``n`` slices in draw order that may be exported.

    ``flags`` (bool, one per available slice) marks near-copies, ``None`` when the gate did
    not run (only allowed with ``allow``); ``implausible`` (bool, or ``None``: none) marks the
    masks the plausibility gate refuses (``pipeline.export.plausibility``). A slice flagged by a
    gate that is not allowed is passed over and the next clean ones take its place;
    ``ValueError`` if fewer than ``n`` such slices exist.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if available < n:
        raise ValueError(f"the synthetic set holds {available} slices, {n} requested")
    if flags is None and not allow:
        raise ValueError("the near-copy gate did not run; only allowed with allow=True")
    near, bad = (
        np.zeros(available, bool) if f is None else np.asarray(f, bool)
        for f in (flags, implausible)
    )
    if len(near) != available or len(bad) != available:
        raise ValueError(f"{len(near)} and {len(bad)} flags for {available} slices")
    near_blocks, bad_blocks = near & (not allow), bad & (not allow_implausible)
    blocked = near_blocks | bad_blocks
    clean = np.flatnonzero(~blocked)
    if len(clean) < n:
        named = (("near-copy", near_blocks), ("plausibility", bad_blocks))
        gates = [g for g, b in named if b.any()]
        raise ValueError(
            f"only {len(clean)} of the {available} synthetic slices pass the "
            f"{' and '.join(gates)} gate{'s' * (len(gates) > 1)}, {n} requested"
        )
    chosen = [int(i) for i in clean[:n]]
    passed = [int(i) for i in np.flatnonzero(blocked) if i < chosen[-1]]
    return Selection(
        chosen,
        refused=[i for i in passed if near_blocks[i]],
        allowed=[i for i in chosen if near[i]],
        implausible_refused=[i for i in passed if bad_blocks[i]],
        implausible_allowed=[i for i in chosen if bad[i]],
    )
