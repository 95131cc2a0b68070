"""Where a mask-conditioned generator's masks come from: real, deformed or generated masks.

``deform_masks`` is MAISI's mask augmentation (Guo et al. 2024, ``scripts/augmentation.py``)
in 2D, with MONAI's transforms: each real training mask is deformed ``draws_per_mask`` times
(``Rand2DElastic``: a B-spline control grid plus a random rotation, scale and translation,
nearest-neighbour resampling) and a deformed mask is kept only if it

* is not empty (``empty``),
* keeps at least ``min_area_ratio`` of its area and grows by at most ``max_area_ratio``
  (``area``; MAISI keeps masks that retain >= 80% of the original size),
* lies inside the body of the slice it came from (``outside_body``): a pancreas drawn over air
  is no training example.

Masks stay binary {0, 1}. Everything here is pure (arrays in, arrays out) and seeded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.params.ct import DeformParams

REASONS = ("empty", "area", "outside_body")


@dataclass(frozen=True)
class MaskSet:
    """Conditions for a conditional generator: (image, mask) pairs and where each came from.

    ``image`` (N, 1, S, S) float32 in [-1, 1] (the source slice: the context a model with
    ``context: background`` keeps), ``mask`` (N, 1, S, S) uint8 {0, 1}, ``source`` (N,) the
    index of the real slice (or generated pair) each mask came from, ``rejected`` the deformed
    masks refused per reason.
    """

    image: np.ndarray
    mask: np.ndarray
    source: np.ndarray
    rejected: dict[str, int]


def body_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """{0, 1} body of one windowed slice (S, S): above ``threshold`` (air clips to -1), holes
    filled (bowel gas and lungs are inside the body)."""
    return ndimage.binary_fill_holes(image > threshold)


def _deformer(params: DeformParams, seed: int):
    from monai.transforms import Rand2DElastic

    t = Rand2DElastic(
        spacing=params.spacing_px,
        magnitude_range=params.magnitude,
        prob=1.0,
        rotate_range=np.deg2rad(params.rotate_deg),
        scale_range=params.scale,
        translate_range=params.translate_px,
        mode="nearest",
        padding_mode="zeros",
    )
    t.set_random_state(seed=seed)
    return t


def check_deformed(
    deformed: np.ndarray, original: np.ndarray, body: np.ndarray, params: DeformParams
) -> str | None:
    """The reason (one of ``REASONS``) a deformed (S, S) {0, 1} mask is refused, or ``None``."""
    area, before = int(deformed.sum()), int(original.sum())
    if area == 0:
        return "empty"
    if not params.min_area_ratio * before <= area <= params.max_area_ratio * before:
        return "area"
    if np.any(deformed & ~body):
        return "outside_body"
    return None


def deform_masks(image: np.ndarray, mask: np.ndarray, params: DeformParams, seed: int) -> MaskSet:
    """``params.draws_per_mask`` deformed copies of every non-empty mask, the refused ones left
    out (module docstring). ``image`` (N, 1, S, S) in [-1, 1], ``mask`` (N, 1, S, S) {0, 1}.

    Raises ``ValueError`` naming ``generate.deform`` when every deformation is refused.
    """
    deformer = _deformer(params, seed)
    images, masks, sources, rejected = [], [], [], Counter()
    for i in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
        body = body_mask(image[i, 0], params.body_threshold)
        for _ in range(params.draws_per_mask):
            out = np.asarray(deformer(mask[i].astype(np.float32))) > 0.5  # (1, S, S)
            reason = check_deformed(out[0], mask[i, 0].astype(bool), body, params)
            if reason is not None:
                rejected[reason] += 1
                continue
            images.append(image[i])
            masks.append(out.astype(np.uint8))
            sources.append(i)
    counts = {r: rejected[r] for r in REASONS}
    if not masks:
        raise ValueError(
            f"generate.deform refused every deformed mask ({counts}); loosen min_area_ratio, "
            "max_area_ratio or the deformation ranges"
        )
    return MaskSet(np.stack(images), np.stack(masks), np.asarray(sources, np.int64), counts)


def real_masks(image: np.ndarray, mask: np.ndarray) -> MaskSet:
    """The non-empty training masks as they are, each with its own slice."""
    keep = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    if not len(keep):
        raise ValueError("no slice holds a pancreas mask")
    return MaskSet(image[keep], mask[keep], keep.astype(np.int64), dict.fromkeys(REASONS, 0))
