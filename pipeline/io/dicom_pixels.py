"""Pixel data of a DICOM file -> Hounsfield units for one CT frame, padding included.

``decode_file`` reads a file with its pixel data; compressed transfer syntaxes decode through
pydicom's plugins (pylibjpeg, pyjpegls), and a native (uncompressed) file shorter than its
matrix says is named as truncated.

The Modality LUT (PS3.3 C.11.1.1.2): RescaleSlope * stored value + RescaleIntercept, read from
each slice (or frame) separately, since exports may rescale every slice differently; storage
may be signed or unsigned (PixelRepresentation, PS3.3 C.7.6.3.1.5), which pydicom's
``pixel_array`` already applies. Pixel padding (PS3.3 C.7.5.1.1.2) and the fill outside the
reconstructed field of view become air, so a window never shows them as tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from pipeline.io.dicom_geometry import SeriesError


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
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
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


def store_int16(stack: np.ndarray, k: int, hu: np.ndarray, source: str) -> None:
    """Write ``hu`` into ``stack[k]``; raise ``SeriesError`` naming ``source`` if out of int16."""
    info = np.iinfo(np.int16)
    if hu.min() < info.min or hu.max() > info.max:
        raise SeriesError(f"{source}: HU range {hu.min():g}..{hu.max():g} exceeds int16")
    stack[k] = hu
