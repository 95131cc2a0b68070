"""Read an Enhanced CT image (one multi-frame file) into the same HU volume as a slice series.

Enhanced CT (PS3.3 A.38) keeps the geometry of each frame in functional groups (PS3.3 C.7.6.16):
PlanePositionSequence > ImagePositionPatient per frame, PlaneOrientationSequence >
ImageOrientationPatient and PixelMeasuresSequence > PixelSpacing, and the Modality LUT in
PixelValueTransformationSequence (C.7.6.16.2.9), each either in the frame's item of
PerFrameFunctionalGroupsSequence or, shared by all frames, in SharedFunctionalGroupsSequence.
Frames are ordered by position along the normal exactly like the files of a series
(``order_slices``), never by frame number. Reading the functional groups is
``dicom_geometry.frame_geometry``'s, which the SEG reader (``label_dicom.py``) shares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipeline.io.dicom_geometry import (
    SeriesError,
    SeriesMeta,
    affine_ras,
    check_affine,
    frame_geometry,
    frame_item,
    order_slices,
    slice_normal,
)
from pipeline.io.dicom_pixels import decode_file, store_int16, to_hu
from pipeline.io.dicom_validate import plane_problems

# Top-level attributes a frame's Modality LUT step needs besides the rescale.
_PADDING = ("PixelPaddingValue", "PixelPaddingRangeLimit", "PixelRepresentation")


def is_enhanced(ds: Dataset) -> bool:
    """True for a multi-frame image with per-frame functional groups (Enhanced CT and kin)."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 and "PerFrameFunctionalGroupsSequence" in ds


def enhanced_geometry(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (orientation (6,), pixel spacing (2,), positions (frames, 3)) of ``ds``.

    Raises ``SeriesError`` naming the file and frame when a frame lacks its geometry or the
    frames disagree on orientation or spacing (not one rectilinear grid).
    """
    try:
        orientation, spacing, positions = frame_geometry(ds)
    except ValueError as exc:
        raise SeriesError(f"{path}: {exc}") from exc
    problems = [f"{path}: {line}" for line in plane_problems(orientation, spacing)]
    if problems:
        raise SeriesError(problems[0], problems)
    return orientation, spacing, positions


def frame_step(path: Path, ds: Dataset, tolerance: float) -> float:
    """Return the slice step of an enhanced image's frames (validated like a series)."""
    orientation, _, positions = enhanced_geometry(path, ds)
    names = [f"{path} frame {i + 1}" for i in range(len(positions))]
    _, step = order_slices(positions, slice_normal(orientation), names, tolerance)
    return float(step)


def _frame_lut(ds: Dataset, frame: int) -> Dataset:
    """A dataset with the frame's rescale (and the file's padding) for ``to_hu``."""
    lut = Dataset()
    item = frame_item(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None else ds
    lut.RescaleSlope = source.get("RescaleSlope", 1.0)
    lut.RescaleIntercept = source.get("RescaleIntercept", 0.0)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = lut[keyword].value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
            raise ValueError(
                f"frame {frame + 1}: {keyword} '{value}' is not a finite, usable number"
            )
    for key in _PADDING:
        if key in ds:
            lut[key] = ds[key]
    return lut


def read_multiframe(
    path: Path,
    header: Dataset,
    slice_spacing_tolerance: float,
    air_hu: int,
    outside_fov_below_hu: int | None,
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read one enhanced multi-frame CT file; same contract as ``read_volume``.

    ``meta.instance_numbers`` are the frame numbers (1-based) in k order and ``meta.files``
    repeats ``path`` once per frame.
    """
    orientation, spacing, positions = enhanced_geometry(path, header)
    names = [f"{path} frame {i + 1}" for i in range(len(positions))]
    order, step = order_slices(positions, slice_normal(orientation), names, slice_spacing_tolerance)
    ds, stored = decode_file(path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if stored.shape != (len(positions), rows, cols):
        raise SeriesError(f"{path}: pixel array shape {stored.shape} does not match the frames")
    stack = np.empty((len(positions), rows, cols), dtype=np.int16)  # (k, row, col)
    for k, i in enumerate(order):
        try:
            hu = to_hu(stored[i], _frame_lut(ds, int(i)), air_hu, outside_fov_below_hu)
        except ValueError as exc:
            raise SeriesError(f"{path}: {exc}", [f"{path}: {exc}"]) from exc
        store_int16(stack, k, hu, names[i])
    affine = affine_ras(orientation, spacing, positions[order[0]], step)
    check_affine(affine, (float(spacing[1]), float(spacing[0]), float(step)), str(path))
    meta = SeriesMeta(
        series_uid=str(header.SeriesInstanceUID),
        patient_id=str(header.get("PatientID", "")),
        files=(path,) * len(order),
        instance_numbers=tuple(int(i) + 1 for i in order),
        shape=(cols, rows, len(order)),
        spacing=(float(spacing[1]), float(spacing[0]), float(step)),
        description=str(header.get("SeriesDescription", "") or ""),
    )
    return stack.transpose(2, 1, 0), affine, meta
