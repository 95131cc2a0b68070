"""Read one CT image series into a Hounsfield-unit volume with a NIfTI (RAS) affine.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane Module): ImageOrientationPatient holds the
row and column direction cosines, ImagePositionPatient the centre of the first transmitted
pixel, PixelSpacing the (row spacing, column spacing) in mm, all in the patient LPS frame.
Slices are ordered by their position projected on the slice normal (row x column cosine), never
by file name or InstanceNumber, because neither is guaranteed to follow anatomy. HU come from
the Modality LUT (PS3.3 C.11.1): RescaleSlope * stored value + RescaleIntercept, per slice;
pixel padding (PS3.3 C.7.5.1.1.2) becomes air. Files are recognised by content, so media
exports (DICOMDIR, IM000001 without extension) read like TCIA folders; compressed transfer
syntaxes decode through pydicom's plugins (pylibjpeg, pyjpegls). Which series of a folder is
read is decided in ``dicom_select.py``; Enhanced CT files are read by ``dicom_multiframe.py``.

The volume convention is ``vol[x=column, y=row, k]`` with k ascending along the normal, which is
what NIfTI (and TCIA's Pancreas-CT labels) use, so the affine columns are the row cosine times
the column spacing, the column cosine times the row spacing and the normal times the slice step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.io.dicom_pixels import to_hu

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


class NotImageError(SeriesError):
    """A file that is no DICOM image (a DICOMDIR, a text file, ...): skipped, not an error."""


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


# MediaStorageSOPClassUID of a DICOMDIR (PS3.4 Annex B.5, Media Storage Directory Storage).
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def read_header(path: Path) -> Dataset:
    """Read the header of ``path`` without pixel data.

    Files are recognised by content, never by name (media exports name them IM000001, no
    extension). Raises ``NotImageError`` naming the file for what is no DICOM image (a DICOMDIR,
    a text file), ``SeriesError`` for a DICOM file whose header does not parse.
    """
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
            raise NotImageError(f"{path}: not a DICOM file") from exc
    except Exception as exc:  # truncated header, bad element lengths, ...
        raise SeriesError(f"{path}: unreadable DICOM header ({exc})") from exc
    media_class = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    if media_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise NotImageError(f"{path}: DICOMDIR (media directory, PS3.10), not an image")
    if "SeriesInstanceUID" not in ds:
        raise NotImageError(f"{path}: DICOM file without SeriesInstanceUID, not an image")
    return ds


def scan_headers(files: Sequence[Path]) -> tuple[dict[Path, Dataset], list[dict]]:
    """Return (header of every DICOM image file, [{"file", "reason"}] for the skipped rest)."""
    headers: dict[Path, Dataset] = {}
    skipped: list[dict] = []
    for path in files:
        try:
            headers[path] = read_header(path)
        except NotImageError as exc:
            skipped.append({"file": str(path), "reason": str(exc).removeprefix(f"{path}: ")})
    return headers, skipped


def group_by_series(headers: dict[Path, Dataset]) -> dict[str, list[Path]]:
    """Group file paths by SeriesInstanceUID (PS3.3 C.7.3.1), preserving input order."""
    groups: dict[str, list[Path]] = {}
    for path, ds in headers.items():
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return groups


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


def decode_file(path: Path) -> tuple[Dataset, np.ndarray]:
    """Read one file with its pixel data; return (dataset, stored values of every frame)."""
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
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8 * frames
        )
        if len(ds.PixelData) < expected:
            raise SeriesError(
                f"{path}: truncated pixel data ({len(ds.PixelData)} of {expected} bytes)"
            )
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise SeriesError(f"{path}: pixel data does not decode ({exc})") from exc
    return ds, stored


def _slice_hu(path: Path, air_hu: int, outside_fov_below_hu: int | None) -> np.ndarray:
    """Decode one single-frame slice; return its HU of shape (rows, cols)."""
    ds, stored = decode_file(path)
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise SeriesError(f"{path}: pixel array shape {stored.shape} is not a single frame")
    return to_hu(stored, ds, air_hu, outside_fov_below_hu)


def store_int16(stack: np.ndarray, k: int, hu: np.ndarray, source: str) -> None:
    """Write ``hu`` into ``stack[k]``; raise ``SeriesError`` naming ``source`` if out of int16."""
    info = np.iinfo(np.int16)
    if hu.min() < info.min or hu.max() > info.max:
        raise SeriesError(f"{source}: HU range {hu.min():g}..{hu.max():g} exceeds int16")
    stack[k] = hu


def read_volume(
    headers: dict[Path, Dataset],
    slice_spacing_tolerance: float = 0.05,
    air_hu: int = -1000,
    outside_fov_below_hu: int | None = -1500,
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read the slices of ONE series (``headers``, one file per slice); see ``read_series``."""
    files = list(headers)
    check_consistent(headers)
    ref = headers[files[0]]
    normal = slice_normal(ref.ImageOrientationPatient)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers.values()])
    names = [str(p) for p in files]
    order, step = order_slices(positions, normal, names, slice_spacing_tolerance)
    rows, cols = int(ref.Rows), int(ref.Columns)
    # Filled slice by slice as (k, row, col); transposed to (col, row, k) at the end, which makes
    # the result Fortran-contiguous, the order NIfTI stores on disk.
    stack = np.empty((len(files), rows, cols), dtype=np.int16)
    for k, idx in enumerate(order):
        hu = _slice_hu(files[idx], air_hu, outside_fov_below_hu)
        store_int16(stack, k, hu, str(files[idx]))
    affine = affine_ras(ref.ImageOrientationPatient, ref.PixelSpacing, positions[order[0]], step)
    row_spacing, col_spacing = (float(v) for v in ref.PixelSpacing)
    meta = SeriesMeta(
        series_uid=str(ref.SeriesInstanceUID),
        patient_id=str(ref.get("PatientID", "")),
        files=tuple(files[i] for i in order),
        instance_numbers=tuple(int(headers[files[i]].InstanceNumber) for i in order),
        shape=(cols, rows, len(files)),
        spacing=(col_spacing, row_spacing, float(step)),
        description=str(ref.get("SeriesDescription", "") or ""),
    )
    return stack.transpose(2, 1, 0), affine, meta


def read_series(
    folder: str | Path,
    slice_spacing_tolerance: float = 0.05,
    *,
    description: str | None = None,
    series_uid: str | None = None,
    air_hu: int = -1000,
    outside_fov_below_hu: int | None = -1500,
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read the axial CT series below ``folder``, chosen among all series found there.

    Files are read by content in any folder depth; what is no DICOM image is skipped and listed
    in ``meta.skipped_files``. The series is chosen by ``pipeline.io.dicom_select`` (localizers,
    single images, non-axial and non-CT series skipped; ``series_uid`` or a ``description``
    regex override the rule) and the others are listed in ``meta.skipped_series``.

    Returns ``(hu, affine, meta)``: ``hu`` is int16 of shape (columns, rows, slices) indexed
    ``hu[x=column, y=row, k]``, k ascending along the slice normal, padding set to ``air_hu``
    (``to_hu``); ``affine`` is the 4x4 RAS voxel-to-mm matrix; ``meta`` lists files and
    InstanceNumbers in k order. Raises ``SeriesError`` naming the file or folder for any
    header, geometry or pixel problem, and listing every series when none is usable.
    """
    # Both build on this module's geometry helpers, hence the late import.
    from pipeline.io.dicom_multiframe import is_enhanced, read_multiframe
    from pipeline.io.dicom_select import choose_series, summarize

    folder = Path(folder)
    files = list_files(folder)
    if not files:
        raise SeriesError(f"{folder}: no files")
    headers, skipped_files = scan_headers(files)
    if not headers:
        raise SeriesError(f"{folder}: no DICOM image among {len(files)} file(s)")
    try:
        chosen, skipped = choose_series(
            summarize(headers, slice_spacing_tolerance), description, series_uid
        )
    except ValueError as exc:
        raise SeriesError(f"{folder}: {exc}") from exc
    first = chosen.files[0]
    if len(chosen.files) == 1 and is_enhanced(headers[first]):
        hu, affine, meta = read_multiframe(
            first, headers[first], slice_spacing_tolerance, air_hu, outside_fov_below_hu
        )
    else:
        hu, affine, meta = read_volume(
            {path: headers[path] for path in chosen.files},
            slice_spacing_tolerance,
            air_hu,
            outside_fov_below_hu,
        )
    return (
        hu,
        affine,
        replace(
            meta,
            skipped_series=tuple(s.record() for s in skipped),
            skipped_files=tuple(skipped_files),
        ),
    )
