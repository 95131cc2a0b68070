"""Pixel data of a DICOM file -> Hounsfield units for one CT frame, padding included.

``decode_file`` reads a file with its pixel data, by content like the header pass
(``dicom_file.read_dicom``: with or without the preamble); compressed transfer syntaxes decode
through pydicom's plugins (pylibjpeg, pyjpegls). A native (uncompressed) file shorter than its
matrix says is named as truncated, and one longer by a row or more is refused too: the header's
Rows, Columns or BitsAllocated do not describe the data (pydicom would read the first bytes as
the image and drop the rest).

The Modality LUT (PS3.3 C.11.1.1.2): RescaleSlope * stored value + RescaleIntercept, read from
each slice (or frame) separately, since exports may rescale every slice differently; the values
are checked before (``dicom_validate``), and a missing intercept is refused where no stored value
is below 0 (``rescale``): such storage needs an offset to hold air, so 0 would shift every HU;
storage
may be signed or unsigned (PixelRepresentation, PS3.3 C.7.6.3.1.5), which pydicom's
``pixel_array`` already applies. Pixel padding (PS3.3 C.7.5.1.1.2) and the fill outside the
reconstructed field of view become air, so a window never shows them as tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from pipeline.io.dicom_file import library_warnings, read_dicom
from pipeline.io.dicom_geometry import SeriesError
from pipeline.io.dicom_validate import present


def decode_file(path: Path, notes: list[str] | None = None) -> tuple[Dataset, np.ndarray]:
    """Read one file with its pixel data; return (dataset, stored values of every frame).

    pydicom's warnings become lines of ``notes`` naming the file (``library_warnings``).
    Raises ``SeriesError`` naming the file when it does not read or decode, or when native
    pixel data is shorter than the header's matrix or longer by a row or more.
    """
    notes = [] if notes is None else notes
    with library_warnings(notes, path):
        return _decode(path)


def _decode(path: Path) -> tuple[Dataset, np.ndarray]:
    try:
        ds = read_dicom(path, stop_before_pixels=False)
    except Exception as exc:
        raise SeriesError(f"{path}: unreadable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise SeriesError(f"{path}: no pixel data (PixelData (7FE0,0010) missing)")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_compressed:
        _check_native_length(path, ds)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        name = getattr(syntax, "name", syntax)
        raise SeriesError(
            f"{path}: pixel data does not decode with TransferSyntaxUID '{syntax}' ({name}): {exc}"
        ) from exc
    return ds, stored


def _check_native_length(path: Path, ds: Dataset) -> None:
    """Raise ``SeriesError`` naming the file when native pixel data (PS3.5 8.1.1, whose size
    the header fixes) is shorter than Rows x Columns x BitsAllocated say, or longer by a row
    or more: then the header does not describe the data, and pydicom would read the first
    bytes as the image and drop the rest."""
    bits = int(ds.get("BitsAllocated", 16))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    row_bytes = int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
    expected = int(ds.Rows) * row_bytes * frames
    held = len(ds.PixelData)
    says = f"Rows {ds.Rows} x Columns {ds.Columns} x BitsAllocated {bits} say {expected}"
    if held < expected:
        raise SeriesError(f"{path}: truncated pixel data ({held} of {expected} bytes; {says})")
    if held - expected >= max(row_bytes, 2):
        raise SeriesError(
            f"{path}: PixelData holds {held} bytes, but {says}: the header does not describe "
            "the data"
        )


def padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Return where ``stored`` holds pixel padding, or ``None`` without PixelPaddingValue.

    PS3.3 C.7.5.1.1.2: PixelPaddingValue alone, or the inclusive range up to
    PixelPaddingRangeLimit, in stored-value units (before the Modality LUT), with the sign of
    PixelRepresentation (pydicom resolves its "US or SS" VR from it).
    """
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue is None:
        return None
    first = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    last = first if limit is None else int(limit)
    low, high = min(first, last), max(first, last)
    return (stored >= low) & (stored <= high)


def to_hu(
    stored: np.ndarray, ds: Dataset, air_hu: int, outside_fov_below_hu: int | None
) -> np.ndarray:
    """Return integral HU of one frame: Modality LUT (PS3.3 C.11.1), padding set to ``air_hu``.

    Padding is what PixelPaddingValue names and, when ``outside_fov_below_hu`` is set, every
    HU below it (scanners fill the corners outside the reconstructed field of view with e.g.
    -2000 or -3024 HU without saying so); either would otherwise read as a value of its own.
    """
    pad = padding_mask(stored, ds)
    if "ModalityLUTSequence" in ds:
        hu = np.rint(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))
    else:
        slope, intercept = rescale(stored, ds, pad)
        if slope == 1.0 and intercept.is_integer():
            # The usual CT case: integer math is exact and ~4x faster than the float round trip.
            hu = stored.astype(np.int32) + int(intercept)
        else:
            hu = np.rint(stored.astype(np.float64) * slope + intercept)
    if pad is not None:
        hu[pad] = air_hu
    if outside_fov_below_hu is not None and hu.min() < outside_fov_below_hu:
        hu[hu < outside_fov_below_hu] = air_hu
    return hu


def rescale(stored: np.ndarray, ds: Dataset, pad: np.ndarray | None) -> tuple[float, float]:
    """Return (RescaleSlope, RescaleIntercept) of one frame, checked by ``dicom_validate``;
    absent ones take the DICOM defaults 1 and 0.

    Raises ``ValueError`` (the caller names the file) for a missing intercept when no stored
    value outside the padding is below 0: such storage (unsigned, or offset like most CT)
    needs an intercept to hold air, and 0 would read air as about +1000 HU.
    """
    slope = float(ds.RescaleSlope) if present(ds, "RescaleSlope") else 1.0
    if present(ds, "RescaleIntercept"):
        return slope, float(ds.RescaleIntercept)
    values = stored if pad is None else stored[~pad]
    if values.size and values.min() >= 0:
        raise ValueError(
            f"RescaleIntercept '': missing, and no stored value is below 0 (lowest "
            f"{values.min()}): the data need an offset to hold air; refusing to read it as 0"
        )
    return slope, 0.0


def store_int16(stack: np.ndarray, k: int, hu: np.ndarray, source: str) -> None:
    """Write ``hu`` into ``stack[k]``; raise ``SeriesError`` naming ``source`` if out of int16."""
    info = np.iinfo(np.int16)
    if hu.min() < info.min or hu.max() > info.max:
        raise SeriesError(f"{source}: HU range {hu.min():g}..{hu.max():g} exceeds int16")
    stack[k] = hu
