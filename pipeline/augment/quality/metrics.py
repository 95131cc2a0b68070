"""Quality of synthetic (image, pancreas mask) slices against real held-out slices: pure cores.

Two families of numbers, every one a plain float:

* distribution metrics of the image channel, computed by ``models.eval.metrics`` so the CT table
  uses exactly the estimators of the MNIST table: Gaussian-kernel MMD on pixels (Gretton et al.
  2012), MS-SSIM diversity of random pairs (Odena et al. 2017), and on the in-domain features of
  ``pipeline.augment.quality.features`` the Frechet distance (Heusel et al. 2017) and improved
  precision/recall (Kynkaanniemi et al. 2019);
* anatomy checks a radiologist would make on the pairs: attenuation inside the pancreas mask
  in Hounsfield units, mask area in mm^2, connected components per mask (a pancreas slice is
  one or a few blobs, not confetti) and the share of empty masks.

Images are ``(N, 1, S, S)`` (or ``(N, S, S)``) in [-1, 1], masks the same shape in {0, 1}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.ndimage
import scipy.stats
import torch

from models.eval import metrics as M
from pipeline.io.tables import cell, csv_text, markdown, raw

# 8-connectivity: pixels touching at a corner belong to one component, as a reader would see it.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _planes(x: Any) -> np.ndarray:
    """(N, 1, S, S) or (N, S, S) -> (N, S, S) without copying."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected (N, 1, S, S) or (N, S, S), got shape {x.shape}")
    return x


def window_to_hu(x: Any, level: float, width: float) -> np.ndarray:
    """Undo the display window: ``hu = level + x * width / 2`` for ``x`` in [-1, 1].

    Exact inverse of ``pipeline.cohort.slicing.window_hu`` inside the window; values that were
    clipped
    to +-1 come back as the window's edges (``level +- width / 2``).
    """
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    return level + np.asarray(x, dtype=np.float64) * (width / 2.0)


def hu_in_masks(images: Any, masks: Any, level: float, width: float) -> dict[str, float]:
    """Mean and sd (HU) of every pixel inside the masks, pooled over slices; NaN if none."""
    img, msk = _planes(images), _planes(masks).astype(bool)
    if img.shape != msk.shape:
        raise ValueError(f"images {img.shape} and masks {msk.shape} differ in shape")
    hu = window_to_hu(img[msk], level, width)
    if hu.size == 0:
        return {"hu_mean": math.nan, "hu_sd": math.nan}
    return {"hu_mean": float(hu.mean()), "hu_sd": float(hu.std())}


def mask_areas_mm2(masks: Any, pixel_mm: float) -> np.ndarray:
    """Area of each mask (N,) in mm^2: pixel count x ``pixel_mm`` squared."""
    if not pixel_mm > 0:
        raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
    msk = _planes(masks).astype(bool)
    return msk.reshape(len(msk), -1).sum(1) * float(pixel_mm) ** 2


def component_counts(masks: Any) -> np.ndarray:
    """Connected components (8-connectivity, ``scipy.ndimage.label``) of each mask, (N,) int."""
    msk = _planes(masks).astype(bool)
    return np.array([scipy.ndimage.label(m, EIGHT_CONNECTED)[1] for m in msk], dtype=np.int64)


def distribution_summary(values: Any, prefix: str) -> dict[str, float]:
    """``{prefix}_median``, ``_q25``, ``_q75`` and ``_iqr`` of ``values``; NaN when empty."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        q25 = med = q75 = math.nan
    else:
        q25, med, q75 = (float(q) for q in np.quantile(v, [0.25, 0.5, 0.75]))
    return {
        f"{prefix}_median": med,
        f"{prefix}_q25": q25,
        f"{prefix}_q75": q75,
        f"{prefix}_iqr": q75 - q25,
    }


def anatomy_metrics(
    images: Any, masks: Any, level: float, width: float, pixel_mm: float
) -> dict[str, float]:
    """Anatomy checks of one set of pairs, all floats (NaN where undefined).

    ``hu_mean``/``hu_sd`` inside the masks; area (mm^2) and component count summaries over the
    *non-empty* masks (an empty mask has neither a size nor a shape); ``components_mean``,
    ``share_multi_component`` (non-empty masks with more than one blob) and ``share_empty``.
    """
    areas = mask_areas_mm2(masks, pixel_mm)
    counts = component_counts(masks)
    present = areas > 0
    out = hu_in_masks(images, masks, level, width)
    out.update(distribution_summary(areas[present], "area_mm2"))
    out.update(distribution_summary(counts[present], "components"))
    out["components_mean"] = float(counts[present].mean()) if present.any() else math.nan
    out["share_multi_component"] = (
        float((counts[present] > 1).mean()) if present.any() else math.nan
    )
    out["share_empty"] = float((~present).mean()) if len(present) else math.nan
    return out


def area_distance_mm2(masks_a: Any, masks_b: Any, pixel_mm: float) -> float:
    """Wasserstein-1 distance (mm^2) between the non-empty mask areas of two sets; NaN if empty.

    One number for "are the generated pancreas cross-sections the right size": the mean shift
    needed to move one area distribution onto the other (``scipy.stats.wasserstein_distance``).
    """
    a, b = mask_areas_mm2(masks_a, pixel_mm), mask_areas_mm2(masks_b, pixel_mm)
    a, b = a[a > 0], b[b > 0]
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(scipy.stats.wasserstein_distance(a, b))


def sample_metrics(
    real: Any,
    other: Any,
    real_feats: torch.Tensor,
    other_feats: torch.Tensor,
    *,
    ms_ssim_pairs: int,
    pr_k: int,
    bandwidth: float | None,
    seed: int,
    batch_size: int = 256,
) -> dict[str, float]:
    """Distribution metrics of ``other`` images against ``real`` (test) images.

    ``mmd`` (unbiased MMD^2, Gaussian kernel on pixels; ``bandwidth`` None = median distance of
    the *real* set, so every model row uses the same kernel), ``ms_ssim_other`` and
    ``ms_ssim_real`` (mean MS-SSIM of ``ms_ssim_pairs`` random pairs within each set, drawn with
    the same seed; lower = more diverse), ``fid``, ``precision`` and ``recall`` (k = ``pr_k``)
    on the given features. MS-SSIM uses 3 scales with a 7-px window, valid from 32 px up.
    """
    x_real = torch.as_tensor(np.asarray(_planes(real), dtype=np.float32))[:, None]
    x_other = torch.as_tensor(np.asarray(_planes(other), dtype=np.float32))[:, None]
    sigma = float(bandwidth) if bandwidth is not None else M.median_bandwidth(x_real)
    pr = M.precision_recall(real_feats, other_feats, k=pr_k, batch_size=batch_size)
    return {
        "mmd": M.mmd(x_real, x_other, bandwidth=sigma),
        "mmd_bandwidth": sigma,
        "ms_ssim_other": M.ms_ssim_diversity(
            x_other, ms_ssim_pairs, torch.Generator().manual_seed(seed), batch_size
        ),
        "ms_ssim_real": M.ms_ssim_diversity(
            x_real, ms_ssim_pairs, torch.Generator().manual_seed(seed), batch_size
        ),
        "fid": M.fid(real_feats, other_feats),
        "precision": pr["precision"],
        "recall": pr["recall"],
    }


# (key in metrics.json, column header, format) of the comparison table.
TABLE_COLUMNS = [
    ("mmd_x1e4", "MMD x1e4 (lower)", "{:.2f}"),
    ("fid", "FID in-domain (lower)", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("ms_ssim", "MS-SSIM of pairs (lower = diverse)", "{:.3f}"),
    ("hu_mean", "HU in mask mean", "{:.1f}"),
    ("hu_sd", "HU in mask sd", "{:.1f}"),
    ("area_mm2_median", "area mm2 median", "{:.0f}"),
    ("area_mm2_iqr", "area mm2 IQR", "{:.0f}"),
    ("area_w1_mm2", "area W1 mm2 (lower)", "{:.0f}"),
    ("components_mean", "components / mask", "{:.2f}"),
    ("share_empty", "empty masks", "{:.2f}"),
    ("near_copy_share", "near-copies", "{:.3f}"),
]


def quality_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table: one row per set (in the given order), the columns of ``TABLE_COLUMNS``.

    Missing or NaN values are left empty rather than printed as 0.
    """
    header = ["set"] + [title for _, title, _ in TABLE_COLUMNS]
    body = [[name] + [cell(r.get(k), f) for k, _, f in TABLE_COLUMNS] for name, r in rows.items()]
    return markdown(header, body)


def quality_csv(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """The same table as CSV with the raw metric keys as header (full precision)."""
    keys = [k for k, _, _ in TABLE_COLUMNS]
    body = [[name] + [raw(r.get(k)) for k in keys] for name, r in rows.items()]
    return csv_text(["set", *keys], body)


REFERENCE_ROW = "real train (floor)"
TARGET_ROW = "real test (target)"


def table_rows(evals: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Order per-set ``metrics.json`` dicts (keyed by set name) into the comparison's rows.

    First the real test split itself (its MS-SSIM and anatomy, read from the ``real_*`` and
    ``ms_ssim_real`` keys every evaluation carries), then the real-train floor (the entry with
    ``reference`` = 1), then the synthetic sets in the given order. The target row has no
    distribution metrics: it is what the others are measured against.
    """
    rows: dict[str, dict[str, Any]] = {}
    first = next(iter(evals.values()), None)
    if first is not None:
        target = {k[len("real_") :]: v for k, v in first.items() if k.startswith("real_")}
        target["ms_ssim"] = first.get("ms_ssim_real")
        rows[TARGET_ROW] = target
    refs = [name for name, m in evals.items() if m.get("reference") == 1]
    for name in refs:
        rows[REFERENCE_ROW if len(refs) == 1 else f"{REFERENCE_ROW}: {name}"] = dict(evals[name])
    rows.update({name: dict(m) for name, m in evals.items() if name not in refs})
    return rows


FRACTION_PREFIX = "near_copy_share_"


def fraction_near_copy_rows(
    evals: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The near-copy share per model and training fraction: ``(columns, rows)``.

    Reads the ``near_copy_share_f<fraction>`` keys of ``gvae ct-quality --fractions``; sets
    without them (the real floor) are left out. ``columns`` are the ``f<fraction>`` names,
    largest fraction first; each row maps them (and ``threshold``) to raw values.
    """
    rows = {
        name: {
            k.removeprefix(FRACTION_PREFIX): v
            for k, v in m.items()
            if k.startswith(FRACTION_PREFIX)
        }
        for name, m in evals.items()
    }
    rows = {
        name: {"threshold": evals[name].get("near_copy_threshold"), **r}
        for name, r in rows.items()
        if r
    }
    columns = sorted(
        {c for r in rows.values() for c in r if c != "threshold"}, key=lambda c: -float(c[1:])
    )
    return columns, rows


def fraction_near_copy_table(by_fraction: tuple[list[str], dict[str, dict[str, Any]]]) -> str:
    """Markdown table of ``fraction_near_copy_rows``: models (rows) by training fraction (columns).

    Empty string when no set was checked per fraction.
    """
    columns, rows = by_fraction
    if not rows:
        return ""
    header = ["set", "threshold", *(f"near-copies {c}" for c in columns)]
    body = [
        [name, cell(r["threshold"], "{:.2f}"), *(cell(r.get(c), "{:.3f}") for c in columns)]
        for name, r in rows.items()
    ]
    return markdown(header, body)


def fraction_near_copy_csv(by_fraction: tuple[list[str], dict[str, dict[str, Any]]]) -> str:
    """The same table as CSV at full precision (``near_copy_share_<fraction>`` columns)."""
    columns, rows = by_fraction
    header = ["set", "near_copy_threshold", *(FRACTION_PREFIX + c for c in columns)]
    # Only None is left empty here: a NaN share is written as "nan", as it always was.
    body = []
    for name, r in rows.items():
        values = [r.get(k) for k in ["threshold", *columns]]
        body.append([name] + ["" if v is None else v for v in values])
    return csv_text(header, body)
