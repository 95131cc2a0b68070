"""The geometry every DICOM reader of the project shares: image planes, slice order, affines.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane Module): ImageOrientationPatient holds the
row and column direction cosines, ImagePositionPatient the centre of the first transmitted
pixel, PixelSpacing the (row spacing, column spacing) in mm, all in the patient LPS frame.
Slices are ordered by their position projected on the slice normal (row x column cosine), never
by file name or InstanceNumber, because neither is guaranteed to follow anatomy.

Multi-frame images (Enhanced CT, PS3.3 A.38; Segmentation, A.51) keep the same attributes per
frame in functional groups (PS3.3 C.7.6.16): PlaneOrientationSequence, PixelMeasuresSequence and
PlanePositionSequence, each either in the frame's item of PerFrameFunctionalGroupsSequence or,
shared by all frames, in SharedFunctionalGroupsSequence.

The volume convention is ``vol[x=column, y=row, k]`` with k ascending along the normal, which is
what NIfTI (and TCIA's Pancreas-CT labels) use, so the affine columns are the row cosine times
the column spacing, the column cosine times the row spacing and the normal times the slice step.

This module imports no other module of ``pipeline.io``: the slice-series reader
(``dicom_read``), the Enhanced CT reader (``dicom_multiframe``), the series choice
(``dicom_select``) and the SEG reader (``label_dicom``) all build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# LPS (DICOM patient frame, PS3.3 C.7.6.2.1.1) -> RAS (NIfTI scanner frame): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GEOMETRY_ATOL = 1e-4  # mm / cosine units: DS values are decimal strings, rounded on write
# How far a direction cosine's length may stray from 1, and the dot product of the two cosines
# from 0, before ImageOrientationPatient is refused (``dicom_validate``): scanners write 6
# decimals or fewer.
ORIENTATION_TOL = 1e-3


class SeriesError(ValueError):
    """A series cannot be read; the message names the offending file or folder.

    ``problems`` holds one line per invalid header value (``dicom_validate``), each naming the
    file, the attribute and the value, for the manifest row and stderr.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class SeriesMeta:
    """What ``read_series`` learned about a series, in volume (k) order."""

    series_uid: str
    patient_id: str
    files: tuple[Path, ...]
    instance_numbers: tuple[int, ...]
    shape: tuple[int, int, int]  # (columns, rows, slices)
    spacing: tuple[float, float, float]  # (column spacing, row spacing, slice step) in mm
    description: str = ""  # SeriesDescription
    # Other series of the case folder and files that are no DICOM image: {uid, description,
    # slices, reason} and {file, reason}, for the manifest.
    skipped_series: tuple[dict, ...] = ()
    skipped_files: tuple[dict, ...] = ()
    # What was read with a default or despite a defect (a missing RescaleIntercept read as 0, a
    # library warning, a damaged file passed over by ``ingest.damaged_members: warn``), one line
    # each naming the file: the case's warning.
    warnings: tuple[str, ...] = ()


def check_consistent(headers: dict[Path, Dataset]) -> None:
    """Every slice must be CT with the same matrix, pixel spacing and orientation."""
    items = list(headers.items())
    ref_path, ref = items[0]
    for path, ds in items:
        if str(ds.Modality).upper() != "CT":
            raise SeriesError(f"{path}: Modality is {ds.Modality!r}, expected 'CT'")
        for kw in ("Rows", "Columns"):
            if int(ds[kw].value) != int(ref[kw].value):
                raise SeriesError(
                    f"{path}: {kw} {ds[kw].value} differs from {ref[kw].value} in {ref_path.name}"
                )
        for kw in ("PixelSpacing", "ImageOrientationPatient"):
            a, b = np.asarray(ds[kw].value, float), np.asarray(ref[kw].value, float)
            if a.shape != b.shape or not np.allclose(a, b, atol=GEOMETRY_ATOL):
                raise SeriesError(
                    f"{path}: {kw} {list(a)} differs from {list(b)} in {ref_path.name}"
                )


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Return the unit slice normal, row cosine x column cosine (PS3.3 C.7.6.2.1.1)."""
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,):
        raise ValueError(f"ImageOrientationPatient must have 6 values, got {iop.size}")
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise ValueError("ImageOrientationPatient row and column cosines are parallel")
    return normal / norm


def order_slices(
    positions: np.ndarray, normal: np.ndarray, names: Sequence[str], tolerance: float
) -> tuple[np.ndarray, float]:
    """Sort slices by position along ``normal``; return (order, slice step in mm).

    Raises ``SeriesError`` for duplicate positions, a gap (a missing slice, naming the files on
    either side), or spacing that varies by more than ``tolerance`` (relative to the median).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if len(positions) < 2:
        raise SeriesError(f"{names[0]}: a volume needs at least 2 slices, found {len(positions)}")
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    steps = np.diff(proj[order])
    median = float(np.median(steps))
    for i, step in enumerate(steps):
        a, b = names[order[i]], names[order[i + 1]]
        if step <= GEOMETRY_ATOL:
            raise SeriesError(f"{a} and {b}: two slices at the same position {proj[order[i]]:g}")
        if abs(step - median) > tolerance * median:
            kind = "missing slice" if step > median else "non-uniform slice spacing"
            raise SeriesError(
                f"{kind} between {a} and {b}: step {step:g} mm, expected {median:g} mm "
                "(irregular stacks are rejected, ingest.irregular: reject)"
            )
    # A stack whose positions drift sideways (gantry tilt) is not a rectilinear grid.
    lateral = (
        positions[order] - positions[order[0]] - np.outer(proj[order] - proj[order[0]], normal)
    )
    worst = int(np.argmax(np.linalg.norm(lateral, axis=1)))
    drift = float(np.linalg.norm(lateral[worst]))
    if drift > tolerance * median:
        along = float(proj[order[worst]] - proj[order[0]])
        tilt = float(np.degrees(np.arctan2(drift, abs(along))))
        raise SeriesError(
            f"{names[order[worst]]}: slice positions drift {drift:.2f} mm off the slice normal "
            f"over {abs(along):.1f} mm, a gantry tilt of {tilt:.1f} degrees; tilted stacks are "
            "rejected (ingest.irregular: reject)"
        )
    return order, (proj[order[-1]] - proj[order[0]]) / (len(proj) - 1)


def affine_ras(
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    first_position: Sequence[float],
    slice_step: float,
) -> np.ndarray:
    """Return the 4x4 RAS affine of ``vol[x=column, y=row, k]`` (PS3.3 C.7.6.2.1.1, Eq. C.7.6.2-1).

    Columns: row cosine * column spacing, column cosine * row spacing, normal * slice step;
    translation: ImagePositionPatient of k = 0; then LPS -> RAS.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = slice_normal(iop) * slice_step
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return LPS_TO_RAS @ lps


def check_affine(
    affine: np.ndarray, spacing: Sequence[float], where: str, proper: bool = True
) -> np.ndarray:
    """Return ``affine`` after checking that it is a proper, finite voxel-to-mm matrix whose
    columns are perpendicular with lengths ``spacing`` (an orthonormal frame scaled by the voxel
    size, what ``affine_ras`` builds from valid headers). Raises ``SeriesError`` naming
    ``where``: no reader may write a mirrored, sheared, scaled or non-finite grid.
    ``proper=False`` accepts a mirrored frame (a NIfTI image may store a left-handed voxel
    order; a DICOM series never does, ``affine_ras`` builds the normal from the cosines).
    """
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.asarray(spacing, dtype=np.float64)
    if not (np.all(np.isfinite(affine)) and np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise SeriesError(f"{where}: image affine or spacing is not finite and positive")
    frame = linear / spacing
    mirrored = proper and np.linalg.det(frame) <= 0
    # A cosine accepted at length 1 + ORIENTATION_TOL gives 1 + 2 * ORIENTATION_TOL here.
    if not np.allclose(frame.T @ frame, np.eye(3), atol=3 * ORIENTATION_TOL) or mirrored:
        raise SeriesError(
            f"{where}: image affine {np.round(linear, 6).tolist()} is not a proper orthonormal "
            f"frame scaled by the spacing {spacing.tolist()}"
        )
    return affine


# ----------------------------------------------------------------------------- multi-frame
def frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Return the first item of functional group ``sequence`` for ``frame`` (0-based): the
    per-frame item wins over the shared one (PS3.3 C.7.6.16); ``None`` if neither has it."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if frame < len(per_frame) and sequence in per_frame[frame] and per_frame[frame][sequence]:
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    if shared and sequence in shared[0] and shared[0][sequence]:
        return shared[0][sequence][0]
    return None


_PLANE_GROUPS = (
    ("PlaneOrientationSequence", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing"),
    ("PlanePositionSequence", "ImagePositionPatient"),
)
_COUNTS = {"ImageOrientationPatient": 6, "PixelSpacing": 2, "ImagePositionPatient": 3}


def _frame_numbers(item: Dataset, key: str, frame: int) -> list[float]:
    """The finite numbers of ``key`` in a functional group item; ``ValueError`` naming the
    frame, the attribute and the value otherwise."""
    raw = item[key].value
    values = list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != _COUNTS[key] or not np.all(np.isfinite(numbers)):
        shown = "\\".join(str(v) for v in values)
        raise ValueError(f"frame {frame + 1}: {key} '{shown}' is not {_COUNTS[key]} finite numbers")
    return numbers


def frame_geometry(
    ds: Dataset, frames: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (orientation (6,), pixel spacing (2,), positions (n, 3)) of the multi-frame
    ``ds``, read from the functional groups of ``frames`` (0-based; every frame by default).

    Raises ``ValueError`` naming the frame when one lacks its geometry, or the attribute when
    the frames disagree on orientation or spacing (not one rectilinear grid).
    """
    if frames is None:
        frames = range(int(ds.NumberOfFrames))
    orientations, spacings, positions = [], [], []
    for i in frames:
        values = []
        for sequence, key in _PLANE_GROUPS:
            item = frame_item(ds, i, sequence)
            if item is None or key not in item:
                raise ValueError(f"frame {i + 1} has no {key} in its functional groups")
            values.append(_frame_numbers(item, key, i))
        orientations.append(values[0])
        spacings.append(values[1])
        positions.append(values[2])
    orientations, spacings = np.asarray(orientations), np.asarray(spacings)
    for name, values in (("ImageOrientationPatient", orientations), ("PixelSpacing", spacings)):
        if not np.allclose(values, values[0], atol=GEOMETRY_ATOL):
            raise ValueError(f"frames differ in {name}; not one volume")
    return orientations[0], spacings[0], np.asarray(positions)
