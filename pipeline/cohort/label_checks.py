"""Label checks of one ingested case: a label placed on its CT grid by geometry, then its HU.

The pure core of ``gvae ingest`` (``pipeline/cohort/ingest.py`` reads and writes the files):
a NIfTI label is placed by its affine (``pipeline/io/label_geometry.py``) or, by the
``label_geometry: instance`` rule, by InstanceNumber; a NRRD label (``pipeline/io/label_nrrd.py``)
by its space directions and origin; a DICOM SEG / RTSTRUCT by its own geometry
(``pipeline/io/label_dicom.py``). The HU under the placed label are then compared with soft
tissue (pancreas 102.6 +/- 30.9 HU on the real patient; a flipped label gives sd 53-72, a
transposed one sd 155). Every error names the label file.

A NIfTI or NRRD label image must hold 0 and 1 only (``ingest.label_values: binary``), or every
non-zero value is read as pancreas with a warning naming the values (``nonzero``); other values
are never written as they are (a Slicer segmentation is 0/1 once its segments are chosen). A
NIfTI or NRRD label grid that covers part of the CT is recorded in the manifest
(``label_coverage``, ``label_geometry.coverage``), with a warning when it ends inside the
labelled organ or when labelled voxels fall off the CT grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.dicom_read import SeriesMeta
from pipeline.io.label_dicom import ct_grid, read_dicom_label
from pipeline.io.label_geometry import coverage, dropped_voxels, open_ends, place_label
from pipeline.io.label_nrrd import NRRD_SUFFIXES, read_nrrd_label
from pipeline.io.nifti import NIFTI_SUFFIXES, align_label, load_label
from pipeline.params.loader import IngestParams


def place_by_affine(
    label: np.ndarray,
    label_affine: np.ndarray,
    shape: tuple,
    affine: np.ndarray,
    params: IngestParams,
    label_file: Path,
) -> tuple[np.ndarray, str]:
    """``place_label`` with the params' tolerances; its errors name ``label_file``."""
    try:
        return place_label(
            label,
            label_affine,
            shape,
            affine,
            params.label_grid_tolerance_mm,
            params.label_outside_tolerance_mm,
        )
    except ValueError as exc:
        raise ValueError(f"{label_file}: {exc}") from exc


@dataclass(frozen=True)
class PlacedLabel:
    """A label on the CT grid: ``mask`` (uint8 0/1 of the CT's shape), how it was placed, the
    manifest fields it adds (``label_coverage`` when its grid covers part of the CT) and its
    warnings, each naming the label file."""

    mask: np.ndarray
    placement: str
    record: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def binary_label(raw: np.ndarray, rule: str, label_file: Path) -> tuple[np.ndarray, str | None]:
    """Return ``(0/1 label, warning or None)`` of a uint8 label by ``ingest.label_values``:
    "binary" raises ``ValueError`` naming the file and the values when any value is not 0 or
    1; "nonzero" maps every non-zero value to 1 with a warning naming the values."""
    if int(raw.max()) <= 1:
        return raw, None
    values = np.flatnonzero(np.bincount(np.ravel(raw, order="K"), minlength=256)).tolist()
    if rule == "binary":
        raise ValueError(
            f"{label_file}: label values {values} are not binary (0, 1): refused "
            "(ingest.label_values: binary; 'nonzero' reads every non-zero value as pancreas)"
        )
    mapped = (raw > 0).astype(np.uint8)
    return mapped, (
        f"{label_file}: label values {values} read as pancreas wherever non-zero "
        "(ingest.label_values: nonzero)"
    )


def grid_record(
    label: np.ndarray,
    label_affine: np.ndarray,
    shape: tuple,
    affine: np.ndarray,
    label_file: Path,
) -> tuple[dict[str, Any], list[str]]:
    """Return ``({"label_coverage": ...} or {}, warnings)`` of a label grid placed by its
    affine: the part of the CT it covers, and a warning for each edge inside the CT that
    holds labelled voxels and for labelled voxels that fall off the CT grid."""
    part = coverage(label.shape, label_affine, shape, affine)
    warnings = [f"{label_file}: {line}" for line in open_ends(label, label_affine, shape, affine)]
    lost = dropped_voxels(label, label_affine, shape, affine)
    if lost:
        warnings.append(
            f"{label_file}: {lost} labelled voxel(s) lie outside the CT grid and are lost (the "
            "label reaches past the CT's first or last slice: a slice missing from the series?)"
        )
    return ({"label_coverage": part} if part is not None else {}), warnings


def place_nifti(
    label: np.ndarray,
    label_affine: np.ndarray,
    shape: tuple,
    affine: np.ndarray,
    params: IngestParams,
    label_file: Path,
) -> PlacedLabel:
    """``place_by_affine`` plus the label's ``grid_record`` (coverage and its warnings)."""
    mask, placement = place_by_affine(label, label_affine, shape, affine, params, label_file)
    record, warnings = grid_record(label, label_affine, shape, affine, label_file)
    return PlacedLabel(mask, placement, record, tuple(warnings))


def align_to_ct(
    label: np.ndarray,
    label_affine: np.ndarray,
    affine: np.ndarray,
    meta: SeriesMeta,
    params: IngestParams,
    label_file: Path,
) -> PlacedLabel:
    """Return the label on the CT grid of meta.shape and affine, by the rule
    ``params.label_geometry`` names: "exact" or "nearest" by the label's affine, or "instance"
    by InstanceNumber (the label then has the CT's shape and covers all of it). Errors name
    ``label_file``."""
    if params.label_geometry == "affine":
        return place_nifti(label, label_affine, meta.shape, affine, params, label_file)
    try:
        return PlacedLabel(align_label(label, meta.instance_numbers, meta.shape), "instance")
    except ValueError as exc:
        raise ValueError(f"{label_file}: {exc}") from exc


def label_hu_stats(hu: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """Return (mean, population sd) of the HU under the non-zero label voxels."""
    # Both volumes are Fortran-ordered (NIfTI's order); a C-order mask walk over them strides
    # through memory and takes ~1.7 s for 512x512x240 instead of ~0.1 s.
    values = np.ravel(hu, order="F")[np.ravel(label, order="F") > 0].astype(np.float64)
    return float(values.mean()), float(values.std())


def implausible_hu(mean: float, sd: float, params: IngestParams) -> str | None:
    """Return why HU inside a label are not soft tissue, or ``None`` if they are.

    Both figures count: on the real patient flipping the label keeps the mean at 86-96 HU but
    raises the sd to 53-72, transposing it keeps the mean (102.8) at sd 155 (data README).
    """
    low, high = params.label_hu_mean_min, params.label_hu_mean_max
    if low <= mean <= high and sd <= params.label_hu_sd_max:
        return None
    return (
        f"HU inside the label are {mean:.1f} +/- {sd:.1f}, not soft tissue (expected mean "
        f"{low:g}..{high:g}, sd <= {params.label_hu_sd_max:g}): is the label misaligned?"
    )


def label_on_ct(
    label_file: Path, affine: np.ndarray, meta: SeriesMeta, params: IngestParams
) -> PlacedLabel:
    """Return the label of ``label_file`` on the CT grid: a NIfTI label made binary
    (``binary_label``) and placed by ``align_to_ct``; a NRRD label (``.nrrd``, Slicer's
    ``.seg.nrrd``: ``pipeline/io/label_nrrd.py``) the same, always by its geometry; anything
    else as a DICOM SEG / RTSTRUCT (``pipeline/io/label_dicom.py``), which carries its own
    geometry and references and is always placed by them. Errors name ``label_file``."""
    name = label_file.name.lower()
    if not name.endswith((*NIFTI_SUFFIXES, *NRRD_SUFFIXES)):
        mask, placement, warnings = read_dicom_label(
            label_file,
            ct_grid(affine, meta),
            params.roi_pattern,
            params.label_grid_tolerance_mm,
            params.label_outside_tolerance_mm,
        )
        return PlacedLabel(mask, placement, warnings=warnings)
    nrrd = name.endswith(NRRD_SUFFIXES)
    if nrrd:
        raw_label, label_affine = read_nrrd_label(label_file, params.roi_pattern)
    else:
        raw_label, label_affine = load_label(label_file)
    if not raw_label.any():
        raise ValueError(f"{label_file}: label has no non-zero voxels")
    raw_label, note = binary_label(raw_label, params.label_values, label_file)
    if nrrd:  # NRRD always carries its geometry; the InstanceNumber rule is TCIA's NIfTI's
        placed = place_nifti(raw_label, label_affine, meta.shape, affine, params, label_file)
    else:
        placed = align_to_ct(raw_label, label_affine, affine, meta, params, label_file)
    if note is None:
        return placed
    return PlacedLabel(placed.mask, placed.placement, placed.record, (note, *placed.warnings))
