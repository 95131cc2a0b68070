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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.io.dicom_geometry import (
    SeriesError,
    SeriesMeta,
    affine_ras,
    check_consistent,
    order_slices,
    slice_normal,
)
from pipeline.io.dicom_multiframe import is_enhanced, read_multiframe
from pipeline.io.dicom_pixels import decode_file, store_int16, to_hu
from pipeline.io.dicom_select import choose_series, summarize


class NotImageError(SeriesError):
    """A file that is no DICOM image (a DICOMDIR, a text file, ...): skipped, not an error."""


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


def _slice_hu(path: Path, air_hu: int, outside_fov_below_hu: int | None) -> np.ndarray:
    """Decode one single-frame slice; return its HU of shape (rows, cols)."""
    ds, stored = decode_file(path)
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise SeriesError(f"{path}: pixel array shape {stored.shape} is not a single frame")
    return to_hu(stored, ds, air_hu, outside_fov_below_hu)


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
