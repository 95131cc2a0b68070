"""Read one CT image series into a Hounsfield-unit volume with a NIfTI (RAS) affine.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane Module): ImageOrientationPatient holds the
row and column direction cosines, ImagePositionPatient the centre of the first transmitted
pixel, PixelSpacing the (row spacing, column spacing) in mm, all in the patient LPS frame.
Slices are ordered by their position projected on the slice normal (row x column cosine), never
by file name or InstanceNumber, because neither is guaranteed to follow anatomy. HU come from
the Modality LUT (PS3.3 C.11.1): RescaleSlope * stored value + RescaleIntercept.

The volume convention is ``vol[x=column, y=row, k]`` with k ascending along the normal, which is
what NIfTI (and TCIA's Pancreas-CT labels) use, so the affine columns are the row cosine times
the column spacing, the column cosine times the row spacing and the normal times the slice step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

# LPS (DICOM patient frame, PS3.3 C.7.6.2.1.1) -> RAS (NIfTI scanner frame): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Attributes without which the geometry or the HU values cannot be reconstructed.
REQUIRED = (
    "SeriesInstanceUID",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "InstanceNumber",
)
_GEOMETRY_ATOL = 1e-4  # mm / cosine units: DS values are decimal strings, rounded on write


class SeriesError(ValueError):
    """A series cannot be read; the message names the offending file or folder."""


@dataclass(frozen=True)
class SeriesMeta:
    """What ``read_series`` learned about a series, in volume (k) order."""

    series_uid: str
    patient_id: str
    files: tuple[Path, ...]
    instance_numbers: tuple[int, ...]
    shape: tuple[int, int, int]  # (columns, rows, slices)
    spacing: tuple[float, float, float]  # (column spacing, row spacing, slice step) in mm


def list_files(folder: str | Path) -> list[Path]:
    """Return every regular, non-hidden file below ``folder``, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_header(path: Path) -> Dataset:
    """Read the header of ``path`` without pixel data; raise ``SeriesError`` naming the file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        # Some archives omit the 128-byte preamble (PS3.10 7.1); accept those only if they
        # parse into something with the attributes we need.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            ds.SeriesInstanceUID  # noqa: B018 - probe: raises if this is not an image header
        except Exception as exc:
            raise SeriesError(f"{path}: not a DICOM file") from exc
    except Exception as exc:  # truncated header, bad element lengths, ...
        raise SeriesError(f"{path}: unreadable DICOM header ({exc})") from exc
    missing = [kw for kw in REQUIRED if kw not in ds]
    if missing:
        raise SeriesError(f"{path}: missing required attribute(s) {', '.join(missing)}")
    return ds


def group_by_series(headers: dict[Path, Dataset]) -> dict[str, list[Path]]:
    """Group file paths by SeriesInstanceUID (PS3.3 C.7.3.1), preserving input order."""
    groups: dict[str, list[Path]] = {}
    for path, ds in headers.items():
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return groups


def _check_consistent(headers: dict[Path, Dataset]) -> None:
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
            if a.shape != b.shape or not np.allclose(a, b, atol=_GEOMETRY_ATOL):
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
        if step <= _GEOMETRY_ATOL:
            raise SeriesError(f"{a} and {b}: two slices at the same position {proj[order[i]]:g}")
        if abs(step - median) > tolerance * median:
            kind = "missing slice" if step > median else "non-uniform slice spacing"
            raise SeriesError(
                f"{kind} between {a} and {b}: step {step:g} mm, expected {median:g} mm"
            )
    # A stack whose positions drift sideways (gantry tilt) is not a rectilinear grid.
    lateral = (
        positions[order] - positions[order[0]] - np.outer(proj[order] - proj[order[0]], normal)
    )
    worst = int(np.argmax(np.linalg.norm(lateral, axis=1)))
    if np.linalg.norm(lateral[worst]) > tolerance * median:
        raise SeriesError(f"{names[order[worst]]}: slice position is off the slice normal (tilt?)")
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


def _to_hu(path: Path) -> np.ndarray:
    """Decode one slice and apply its Modality LUT; return integral HU of shape (rows, cols)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise SeriesError(f"{path}: unreadable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise SeriesError(f"{path}: no pixel data")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_compressed:
        # Native encoding (PS3.5 8.1.1) has a known size, so a short file is named as such.
        bits = int(ds.get("BitsAllocated", 16))
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        if len(ds.PixelData) < expected:
            raise SeriesError(
                f"{path}: truncated pixel data ({len(ds.PixelData)} of {expected} bytes)"
            )
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise SeriesError(f"{path}: pixel data does not decode ({exc})") from exc
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise SeriesError(f"{path}: pixel array shape {stored.shape} is not a single frame")
    if "ModalityLUTSequence" in ds:
        return np.rint(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept.is_integer():
        # The usual CT case: integer math is exact and ~4x faster than the float round trip.
        return stored.astype(np.int32) + int(intercept)
    return np.rint(stored.astype(np.float64) * slope + intercept)


def read_series(
    folder: str | Path, slice_spacing_tolerance: float = 0.05
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read the single CT series below ``folder``.

    Returns ``(hu, affine, meta)``: ``hu`` is int16 of shape (columns, rows, slices) indexed
    ``hu[x=column, y=row, k]``, k ascending along the slice normal; ``affine`` is the 4x4 RAS
    voxel-to-mm matrix; ``meta`` lists files and InstanceNumbers in k order. Raises
    ``SeriesError`` naming the file or folder for any header, geometry or pixel problem.
    """
    folder = Path(folder)
    files = list_files(folder)
    if not files:
        raise SeriesError(f"{folder}: no files")
    headers = {path: read_header(path) for path in files}
    groups = group_by_series(headers)
    if len(groups) > 1:
        uids = ", ".join(f"{uid} ({len(p)} files)" for uid, p in sorted(groups.items()))
        raise SeriesError(f"{folder}: {len(groups)} series mixed in one case folder: {uids}")
    _check_consistent(headers)
    ref = headers[files[0]]
    normal = slice_normal(ref.ImageOrientationPatient)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers.values()])
    names = [str(p) for p in files]
    order, step = order_slices(positions, normal, names, slice_spacing_tolerance)
    rows, cols = int(ref.Rows), int(ref.Columns)
    # Filled slice by slice as (k, row, col); transposed to (col, row, k) at the end, which makes
    # the result Fortran-contiguous, the order NIfTI stores on disk.
    stack = np.empty((len(files), rows, cols), dtype=np.int16)
    info = np.iinfo(np.int16)
    for k, idx in enumerate(order):
        hu = _to_hu(files[idx])
        if hu.min() < info.min or hu.max() > info.max:
            raise SeriesError(f"{files[idx]}: HU range {hu.min():g}..{hu.max():g} exceeds int16")
        stack[k] = hu
    affine = affine_ras(ref.ImageOrientationPatient, ref.PixelSpacing, positions[order[0]], step)
    row_spacing, col_spacing = (float(v) for v in ref.PixelSpacing)
    meta = SeriesMeta(
        series_uid=str(ref.SeriesInstanceUID),
        patient_id=str(ref.get("PatientID", "")),
        files=tuple(files[i] for i in order),
        instance_numbers=tuple(int(headers[files[i]].InstanceNumber) for i in order),
        shape=(cols, rows, len(files)),
        spacing=(col_spacing, row_spacing, float(step)),
    )
    return stack.transpose(2, 1, 0), affine, meta
