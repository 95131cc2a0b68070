"""The plausibility gate of the export: masks that are no pancreas do not go out labelled as one.

Every exported SEG is coded SCT 15776009 "Pancreas", so a clinician takes each mask for the
model's drawing of a pancreas. A generator that has not learned the mask channel draws empty
masks, masks over the whole image or scatter; the gate refuses such slices like near-copies
(``pipeline.export.privacy``), for one of these reasons, checked in this order:

* ``empty``: no mask pixel, when the set is meant to carry pancreas (``empty: refuse``);
* ``covers_image``: the mask covers more than ``max_share`` of the image, whatever the real
  masks say (this check needs no reference, so it runs even without the training slices);
* ``area``: the mask's area lies outside the range of the real training masks' areas, widened
  by ``area_slack`` both ways (non-empty real masks only);
* ``components``: more 8-connected components than the real masks' maximum plus
  ``extra_components``, or fewer than their minimum (8-connectivity, as ``gvae generate``
  counts fragments: diagonal neighbours are one component, as a reader would see them).

A sample is plausible when it lies within the support of the real data: the idea of the
precision of Kynkaanniemi et al. 2019 ("Improved Precision and Recall Metric for Assessing
Generative Models", Sec. 2), with the support taken here as the range of the two measures a
reader of a mask sees first, how much of the slice it covers and in how many pieces, rather
than k-NN balls in a feature space. Everything here is pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.params.export import PlausibilityParams

REASONS = ("empty", "covers_image", "area", "components")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class MaskRanges:
    """What real training masks look like: area share and component count ranges."""

    share: tuple[float, float]  # share of the image covered, min..max over non-empty masks
    components: tuple[int, int]  # 8-connected components, min..max over non-empty masks
    masks: int  # the non-empty real masks the ranges come from


@dataclass(frozen=True)
class PlausibilityResult:
    """Per synthetic slice: its measures and why it is implausible (``""``: plausible)."""

    share: np.ndarray  # float (M,): share of the image the mask covers
    components: np.ndarray  # int (M,)
    reasons: np.ndarray  # str (M,): one of REASONS, or ""
    ranges: MaskRanges | None  # None: no real masks, the range checks did not run

    @property
    def flags(self) -> np.ndarray:
        """Bool (M,): the slices the gate refuses."""
        return self.reasons != ""

    def counts(self) -> dict[str, int]:
        """Slices per reason, every reason listed."""
        return {r: int(np.sum(self.reasons == r)) for r in REASONS}


def measure_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of the image covered (M,) float, 8-connected components (M,) int) of ``masks``.

    ``masks`` is (M, 1, S, S) or (M, S, S), nonzero = inside.
    """
    m = np.asarray(masks) != 0
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"expected masks (M, 1, S, S) or (M, S, S), got shape {masks.shape}")
    share = m.reshape(len(m), -1).mean(axis=1) if len(m) else np.zeros(0)
    components = np.array([ndimage.label(x, structure=_EIGHT)[1] for x in m], dtype=int)
    return share.astype(float), components


def real_ranges(masks: np.ndarray) -> MaskRanges:
    """The ranges of the non-empty real ``masks``; ``ValueError`` when every one is empty."""
    share, components = measure_masks(masks)
    full = share > 0
    if not full.any():
        raise ValueError(f"none of the {len(share)} real training masks has a pancreas pixel")
    return MaskRanges(
        share=(float(share[full].min()), float(share[full].max())),
        components=(int(components[full].min()), int(components[full].max())),
        masks=int(full.sum()),
    )


def _reason(share: float, parts: int, ranges: MaskRanges | None, p: PlausibilityParams) -> str:
    if share == 0:
        return "empty" if p.empty == "refuse" else ""
    if share > p.max_share:
        return "covers_image"
    if ranges is None:
        return ""
    low, high = ranges.share[0] / p.area_slack, ranges.share[1] * p.area_slack
    if not low <= share <= high:
        return "area"
    if not ranges.components[0] <= parts <= ranges.components[1] + p.extra_components:
        return "components"
    return ""


def plausibility_gate(
    masks: np.ndarray, ranges: MaskRanges | None, params: PlausibilityParams
) -> PlausibilityResult:
    """Check every synthetic mask of ``masks`` (M, 1, S, S) against ``ranges``.

    ``ranges`` are the real training masks' (``real_ranges``), ``None`` when there are none:
    then only ``empty`` and ``covers_image`` can refuse a slice.
    """
    share, components = measure_masks(masks)
    reasons = [
        _reason(float(s), int(c), ranges, params) for s, c in zip(share, components, strict=True)
    ]
    return PlausibilityResult(share, components, np.array(reasons, dtype=object), ranges)


def describe(result: PlausibilityResult, i: int, params: PlausibilityParams) -> str:
    """Why slice ``i``'s mask is implausible, in words (``""`` when it is not)."""
    reason, share, parts = result.reasons[i], float(result.share[i]), int(result.components[i])
    real = result.ranges
    if reason == "empty":
        return "empty: no pancreas pixel"
    if reason == "covers_image":
        return f"covers_image: {share:.1%} of the image, over the {params.max_share:.0%} limit"
    if reason == "area" and real is not None:
        low, high = real.share[0] / params.area_slack, real.share[1] * params.area_slack
        return f"area: {share:.2%} of the image, outside {low:.2%}..{high:.2%}"
    if reason == "components" and real is not None:
        high = real.components[1] + params.extra_components
        return f"components: {parts}, outside {real.components[0]}..{high}"
    return reason
