"""Read one CT image series into a Hounsfield-unit volume with a NIfTI (RAS) affine.

The top of the DICOM readers: it finds the files of a case folder, lets ``dicom_select.py``
choose the series, and reads it slice by slice here or, for an Enhanced CT file, with
``dicom_multiframe.py``. The geometry (PS3.3 C.7.6.2 Image Plane Module: slices ordered by
position along the normal, never by file name or InstanceNumber; the RAS affine of
``vol[x=column, y=row, k]``) comes from ``dicom_geometry.py``, decoding and HU from
``dicom_pixels.py``: the Modality LUT (PS3.3 C.11.1), RescaleSlope * stored value +
RescaleIntercept, per slice; pixel padding (PS3.3 C.7.5.1.1.2) becomes air. Files are
recognised by content, so media exports (DICOMDIR, IM000001 without extension) read like TCIA
folders; compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg, pyjpegls).

Every header value that shapes HU or geometry is validated before a pixel is decoded
(``dicom_validate``, run by the series choice); files with or without the PS3.10 preamble read
the same way in both passes (``dicom_file``); a file beside the chosen series that looks like a
damaged or stray member of it is an error or a warning, never silently skipped
(``dicom_members``); and the affine is checked before it is returned (``check_affine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.io.dicom_file import has_signature, library_warnings, read_dicom
from pipeline.io.dicom_geometry import (
    SeriesError,
    SeriesMeta,
    affine_ras,
    check_affine,
    check_consistent,
    order_slices,
    slice_normal,
)
from pipeline.io.dicom_members import cut_short, damaged_members, member_lines, stray_members
from pipeline.io.dicom_multiframe import is_enhanced, read_multiframe
from pipeline.io.dicom_pixels import decode_file, store_int16, to_hu
from pipeline.io.dicom_select import REQUIRED, SeriesSummary, choose_series, summarize
from pipeline.io.dicom_validate import series_problems

DAMAGED_POLICIES = ("error", "warn")


class NotImageError(SeriesError):
    """A file that is no DICOM image (a DICOMDIR, a text file, ...): skipped, not an error."""


class DamagedFileError(NotImageError):
    """A file that claims to be DICOM (the PS3.10 signature) but yields no image header:
    truncated or corrupt. Skipped like a non-image and flagged ``damaged`` in its
    ``skipped_files`` entry, so that ``dicom_members.damaged_members`` holds the case to it."""


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


def read_header(path: Path, notes: list[str] | None = None) -> Dataset:
    """Read the header of ``path`` without pixel data (``dicom_file.read_dicom``: with or
    without the 128-byte preamble, PS3.10 7.1, as the pixel pass reads it).

    Files are recognised by content, never by name (media exports name them IM000001, no
    extension). Raises ``NotImageError`` naming the file for what is no DICOM image (a DICOMDIR,
    a text file) and ``DamagedFileError`` for a file with the DICOM signature whose header does
    not parse or lacks SeriesInstanceUID. pydicom's warnings go to ``notes``
    (``library_warnings``).
    """
    notes = [] if notes is None else notes
    signed = has_signature(path)
    try:
        with library_warnings(notes, path):
            ds = read_dicom(path, stop_before_pixels=True)
            uid = ds.get("SeriesInstanceUID")
    except InvalidDicomError as exc:
        raise NotImageError(f"{path}: not a DICOM file") from exc
    except Exception as exc:  # truncated header, bad element lengths, ...
        if signed:
            raise DamagedFileError(f"{path}: unreadable DICOM header ({exc})") from exc
        raise NotImageError(f"{path}: not a DICOM file") from exc
    media_class = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    if media_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise NotImageError(f"{path}: DICOMDIR (media directory, PS3.10), not an image")
    if not uid:
        if not signed:  # read only by force: anything may parse into a few elements
            raise NotImageError(f"{path}: not a DICOM file")
        raise DamagedFileError(
            f"{path}: DICOM file without SeriesInstanceUID (0020,000E): damaged, or not an image"
        )
    return ds


def scan_headers(files: Sequence[Path]) -> tuple[dict[Path, Dataset], list[dict], list[str]]:
    """Return (header of every DICOM image file, [{"file", "reason"}] for the skipped rest,
    notes). A skipped file with the DICOM signature (``DamagedFileError``) has "damaged": true.
    """
    headers: dict[Path, Dataset] = {}
    skipped: list[dict] = []
    notes: list[str] = []
    for path in files:
        try:
            headers[path] = read_header(path, notes)
        except NotImageError as exc:
            entry = {"file": str(path), "reason": str(exc).removeprefix(f"{path}: ")}
            if isinstance(exc, DamagedFileError):
                entry["damaged"] = True
            skipped.append(entry)
    return headers, skipped, notes


def _slice_hu(
    path: Path, air_hu: int, outside_fov_below_hu: int | None, notes: list[str]
) -> np.ndarray:
    """Decode one single-frame slice; return its HU of shape (rows, cols)."""
    ds, stored = decode_file(path, notes)
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise SeriesError(f"{path}: pixel array shape {stored.shape} is not a single frame")
    try:
        hu = to_hu(stored, ds, air_hu, outside_fov_below_hu)
    except ValueError as exc:
        raise SeriesError(f"{path}: {exc}", [f"{path}: {exc}"]) from exc
    low, high = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if hu.min() < low or hu.max() > high:
        # Valid values can still combine into HU no int16 holds; name the ones that did.
        used = ", ".join(
            f"{kw} '{ds.get(kw, '')}'"
            for kw in ("RescaleSlope", "RescaleIntercept", "PixelRepresentation", "BitsStored")
        )
        raise SeriesError(f"{path}: HU range {hu.min():g}..{hu.max():g} exceeds int16 ({used})")
    return hu


def read_volume(
    headers: dict[Path, Dataset],
    slice_spacing_tolerance: float = 0.05,
    air_hu: int = -1000,
    outside_fov_below_hu: int | None = -1500,
    notes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read the slices of ONE series (``headers``, one file per slice); see ``read_series``.

    The headers are validated first (``dicom_validate``), so nothing below computes with an
    unchecked value; ``notes`` are that validation's notes when the caller has run it already
    (``read_series``: the series choice validates every series). ``meta.warnings`` holds the
    defaults taken and the library warnings met, one line each naming the file.
    """
    files = list(headers)
    if notes is None:
        problems, notes = series_problems(headers)
        if problems:
            raise SeriesError(
                f"{files[0].parent}: {len(problems)} invalid header value(s)", problems
            )
    notes = list(notes)
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
        hu = _slice_hu(files[idx], air_hu, outside_fov_below_hu, notes)
        store_int16(stack, k, hu, str(files[idx]))
    affine = affine_ras(ref.ImageOrientationPatient, ref.PixelSpacing, positions[order[0]], step)
    row_spacing, col_spacing = (float(v) for v in ref.PixelSpacing)
    spacing = (col_spacing, row_spacing, float(step))
    check_affine(affine, spacing, str(files[order[0]]))
    meta = SeriesMeta(
        series_uid=str(ref.SeriesInstanceUID),
        patient_id=str(ref.get("PatientID", "")),
        files=tuple(files[i] for i in order),
        instance_numbers=tuple(int(headers[files[i]].InstanceNumber) for i in order),
        shape=(cols, rows, len(files)),
        spacing=spacing,
        description=str(ref.get("SeriesDescription", "") or ""),
        warnings=tuple(notes),
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
    damaged_members: str = "error",
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read the axial CT series below ``folder``, chosen among all series found there.

    Files are read by content in any folder depth; what is no DICOM image is skipped and listed
    in ``meta.skipped_files``. The series is chosen by ``pipeline.io.dicom_select`` (localizers,
    single images, non-axial and non-CT series skipped; ``series_uid`` or a ``description``
    regex override the rule) and the others are listed in ``meta.skipped_series``. Files beside
    the chosen series that look like damaged or stray members of it (``dicom_members``) are an
    error naming them with ``damaged_members="error"``, else lines of ``meta.warnings``.

    Returns ``(hu, affine, meta)``: ``hu`` is int16 of shape (columns, rows, slices) indexed
    ``hu[x=column, y=row, k]``, k ascending along the slice normal, padding set to ``air_hu``
    (``to_hu``); ``affine`` is the 4x4 RAS voxel-to-mm matrix; ``meta`` lists files and
    InstanceNumbers in k order. Raises ``SeriesError`` naming the file or folder for any
    header, geometry or pixel problem (its ``problems`` one line per invalid value or damaged
    file), and listing every series when none is usable.
    """
    if damaged_members not in DAMAGED_POLICIES:
        raise ValueError(f"damaged_members must be one of {DAMAGED_POLICIES}")
    folder = Path(folder)
    files = list_files(folder)
    if not files:
        raise SeriesError(f"{folder}: no files")
    headers, skipped_files, notes = scan_headers(files)
    if not headers:
        damaged = member_lines([s for s in skipped_files if s.get("damaged")])
        listed = "".join(f"; {line}" for line in damaged)
        raise SeriesError(f"{folder}: no DICOM image among {len(files)} file(s){listed}", damaged)
    summaries = summarize(headers, slice_spacing_tolerance)
    damaged = [*skipped_files, *cut_short(headers, REQUIRED)]
    try:
        chosen, skipped = choose_series(summaries, description, series_uid)
    except ValueError as exc:
        raise _no_series_error(folder, exc, summaries, damaged) from exc
    # Damaged and stray members are found from the headers, before a pixel is decoded.
    suspects = _suspect_members(chosen, skipped, headers, damaged)
    if suspects and damaged_members == "error":
        raise SeriesError(
            f"{folder}: {len(suspects)} file(s) beside series {chosen.uid} look like members of "
            f"it that could not be read with it (ingest.damaged_members: error): "
            + "; ".join(suspects),
            suspects,
        )
    hu, affine, meta = _read_chosen(
        chosen, headers, slice_spacing_tolerance, air_hu, outside_fov_below_hu
    )
    passed = [f"{line}; volume read without it (ingest.damaged_members: warn)" for line in suspects]
    return (
        hu,
        affine,
        replace(
            meta,
            skipped_series=tuple(s.record() for s in skipped),
            skipped_files=tuple(skipped_files),
            warnings=(*notes, *meta.warnings, *passed),
        ),
    )


def _read_chosen(
    chosen: SeriesSummary,
    headers: dict[Path, Dataset],
    tolerance: float,
    air_hu: int,
    outside_fov_below_hu: int | None,
) -> tuple[np.ndarray, np.ndarray, SeriesMeta]:
    """Read the chosen series: one Enhanced CT file, or one file per slice."""
    first = chosen.files[0]
    if len(chosen.files) == 1 and is_enhanced(headers[first]):
        return read_multiframe(first, headers[first], tolerance, air_hu, outside_fov_below_hu)
    return read_volume(
        {path: headers[path] for path in chosen.files},
        tolerance,
        air_hu,
        outside_fov_below_hu,
        chosen.notes,
    )


def _suspect_members(
    chosen: SeriesSummary,
    skipped: list[SeriesSummary],
    headers: dict[Path, Dataset],
    damaged: list[dict],
) -> list[str]:
    """Lines naming the damaged and stray members of the chosen series (``dicom_members``);
    ``damaged``: the skipped files and the CT headers cut short."""
    lines = member_lines(damaged_members(damaged, chosen.files))
    return lines + stray_members(chosen, skipped, headers)


def _no_series_error(
    folder: Path, exc: ValueError, summaries: list[SeriesSummary], suspects: list[dict]
) -> SeriesError:
    """The error when no series is usable: the listing, plus every damaged file (``suspects``)
    beside a broken series (a missing slice is often a present file that did not read) and
    the header problems, one line each."""
    broken = [s for s in summaries if s.defect]
    damaged = member_lines(damaged_members(suspects, [p for s in broken for p in s.files]))
    listed = "".join(f"; present but unreadable: {line}" for line in damaged)
    problems = [line for s in broken for line in s.problems] + damaged
    return SeriesError(f"{folder}: {exc}{listed}", problems)
