"""One validation pass over every header value that shapes HU or geometry, before any pixel.

``dicom_select`` runs it on every would-be axial CT volume; a series with a problem is not read
(a defect, named in the manifest), so no path builds an affine or HU from a value that is not
checked here. Each problem is one line naming the file, the attribute and the value as written:
``<file>: <Attribute> '<value>': <why>``.

Per slice (PS3.3 C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.11.1 Modality LUT):

- ImageOrientationPatient: 6 finite numbers; each cosine of unit length and the two
  perpendicular, to ``ORIENTATION_TOL`` (a longer cosine scales the voxel, a skewed pair
  shears the volume);
- PixelSpacing: 2 finite numbers > 0 (a negative one mirrors the volume);
- ImagePositionPatient: 3 finite numbers; InstanceNumber an integer;
- Rows, Columns > 0; SamplesPerPixel 1; BitsAllocated 8, 16 or 32; BitsStored 1..BitsAllocated;
  HighBit BitsStored - 1; PixelRepresentation 0 or 1;
- RescaleSlope a finite, non-zero number and RescaleIntercept a finite number (unless a
  ModalityLUTSequence replaces both).

Across the series: one PatientID, StudyInstanceUID and FrameOfReferenceUID (positions in two
frames of reference do not share an axis), no SOPInstanceUID twice. A missing RescaleSlope or
RescaleIntercept takes its default (1, 0) with a note, the case's warning, unless another slice
of the series states a different value; the pixel pass then refuses a missing intercept where
no stored value is below 0, i.e. where the stored values need an offset to hold air
(``dicom_pixels.rescale``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipeline.io.dicom_geometry import ORIENTATION_TOL

RESCALE_DEFAULTS = {"RescaleSlope": 1.0, "RescaleIntercept": 0.0}
_IDENTITY = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID")
# The attributes checked here, each read once per header: a pydicom attribute access costs
# ~20 us, and a 240-slice series is validated for the choice and again for the read.
CHECKED = (
    "ImageOrientationPatient", "PixelSpacing", "ImagePositionPatient", "InstanceNumber",
    "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "RescaleSlope", "RescaleIntercept", "SOPInstanceUID", *_IDENTITY,
)  # fmt: skip


def shown(value: Any) -> str:
    """The value as the file writes it: several values joined by a backslash."""
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, MultiValue) and not value)


def present(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is in ``ds`` with a value (an empty Type 2 element counts as absent)."""
    return keyword in ds and not _empty(ds[keyword].value)


def values_of(ds: Dataset) -> dict[str, Any]:
    """Return {keyword: value} of the ``CHECKED`` attributes ``ds`` has with a value."""
    out = {}
    for keyword in CHECKED:
        value = ds.get(keyword)
        if not _empty(value):
            out[keyword] = value
    if "ModalityLUTSequence" in ds:
        out["ModalityLUTSequence"] = True
    return out


def parse_numbers(value: Any, count: int) -> tuple[list[float] | None, str | None]:
    """Return ``(count finite numbers, None)`` or ``(None, why not)`` for an attribute value
    (``None``: absent)."""
    if _empty(value):
        return None, "missing"
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    if len(values) != count:
        return None, f"{len(values)} value(s), expected {count}"
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return None, "not a number" if count == 1 else "not all numbers"
    if not all(math.isfinite(v) for v in floats):
        return None, "not a finite number" if count == 1 else "not all finite"
    return floats, None


def numbers(ds: Dataset, keyword: str, count: int) -> tuple[list[float] | None, str | None]:
    """``parse_numbers`` of ``keyword`` in ``ds``."""
    return parse_numbers(ds[keyword].value if keyword in ds else None, count)


class _Lines:
    """Problem lines of one file: ``add(keyword, why)`` -> "<file>: <keyword> '<value>': why"."""

    def __init__(self, path: Path, values: dict[str, Any]) -> None:
        self.path, self.values, self.lines = path, values, []

    def add(self, keyword: str, why: str) -> None:
        self.lines.append(f"{self.path}: {keyword} '{shown(self.values.get(keyword))}': {why}")


def cosine_problems(iop: Sequence[float]) -> list[str]:
    """Why 6 finite direction cosines are not an orthonormal pair, or []."""
    row, col = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    out = []
    for name, cosine in (("row", row), ("column", col)):
        length = float(np.linalg.norm(cosine))
        if abs(length - 1.0) > ORIENTATION_TOL:
            out.append(f"{name} cosine has length {length:.6g}, not 1")
    dot = float(row @ col)
    if abs(dot) > ORIENTATION_TOL:
        out.append(f"row and column cosines are not perpendicular (dot product {dot:.6g})")
    return out


def plane_problems(orientation: Sequence[float], spacing: Sequence[float]) -> list[str]:
    """Problem lines (without the file) of an orientation and pixel spacing already read as
    finite numbers, e.g. an Enhanced CT's functional groups."""
    text = "\\".join(f"{v:g}" for v in orientation)
    out = [f"ImageOrientationPatient '{text}': {why}" for why in cosine_problems(orientation)]
    if min(spacing) <= 0:
        shown_spacing = "\\".join(f"{v:g}" for v in spacing)
        out.append(f"PixelSpacing '{shown_spacing}': spacing must be > 0")
    return out


def _orientation(lines: _Lines, v: dict[str, Any]) -> None:
    iop, why = parse_numbers(v.get("ImageOrientationPatient"), 6)
    if iop is None:
        lines.add("ImageOrientationPatient", why)
        return
    for why in cosine_problems(iop):
        lines.add("ImageOrientationPatient", why)


def _plane(lines: _Lines, v: dict[str, Any]) -> None:
    spacing, why = parse_numbers(v.get("PixelSpacing"), 2)
    if spacing is None:
        lines.add("PixelSpacing", why)
    elif min(spacing) <= 0:
        lines.add("PixelSpacing", "spacing must be > 0")
    _, why = parse_numbers(v.get("ImagePositionPatient"), 3)
    if why:
        lines.add("ImagePositionPatient", why)
    try:
        text = str(v["InstanceNumber"]).strip()
        if int(text) != float(text):
            raise ValueError(text)
    except (KeyError, TypeError, ValueError):
        lines.add("InstanceNumber", "not an integer")


def _pixels(lines: _Lines, v: dict[str, Any]) -> None:
    for keyword in ("Rows", "Columns"):
        if not isinstance(v.get(keyword), int) or v[keyword] <= 0:
            lines.add(keyword, "must be a positive integer")
    if v.get("SamplesPerPixel", 1) != 1:
        lines.add("SamplesPerPixel", "a CT image has 1 sample per pixel")
    allocated = v.get("BitsAllocated")
    if allocated not in (8, 16, 32):
        lines.add("BitsAllocated", "must be 8, 16 or 32")
        return
    stored = v.get("BitsStored")
    if not isinstance(stored, int) or not 1 <= stored <= allocated:
        lines.add("BitsStored", f"must be 1..BitsAllocated ({allocated})")
    elif "HighBit" in v and v["HighBit"] != stored - 1:
        lines.add("HighBit", f"must be BitsStored - 1 ({stored - 1})")
    if v.get("PixelRepresentation") not in (0, 1):
        lines.add("PixelRepresentation", "must be 0 (unsigned) or 1 (signed)")


def _rescale(lines: _Lines, v: dict[str, Any]) -> None:
    if "ModalityLUTSequence" in v:
        return
    for keyword in RESCALE_DEFAULTS:
        if keyword not in v:
            continue  # defaults: ``rescale_problems``
        value, why = parse_numbers(v[keyword], 1)
        if value is None:
            lines.add(keyword, why)
        elif keyword == "RescaleSlope" and value[0] == 0:
            lines.add(keyword, "zero: every pixel would read the intercept")


def slice_problems(path: Path, values: dict[str, Any]) -> list[str]:
    """Return the problem lines of one slice header, given its ``values_of`` (module
    docstring), [] when it is valid."""
    lines = _Lines(path, values)
    _orientation(lines, values)
    _plane(lines, values)
    _pixels(lines, values)
    _rescale(lines, values)
    return lines.lines


def identity_problems(values: dict[Path, dict[str, Any]]) -> list[str]:
    """Return a line per slice whose PatientID, StudyInstanceUID or FrameOfReferenceUID
    differs from the first slice's, or whose SOPInstanceUID another slice already has."""
    items = list(values.items())
    ref_path, ref = items[0]
    out, seen = [], {}
    for path, v in items:
        for keyword in _IDENTITY:
            if keyword in v and keyword in ref and v[keyword] != ref[keyword]:
                out.append(
                    f"{path}: {keyword} '{shown(v[keyword])}': differs from "
                    f"'{shown(ref[keyword])}' in {ref_path.name}, in one series"
                )
        uid = str(v.get("SOPInstanceUID", ""))
        if uid and uid in seen:
            out.append(
                f"{path}: SOPInstanceUID '{uid}': also the SOPInstanceUID of {seen[uid].name} "
                "(one image stored twice?)"
            )
        seen.setdefault(uid, path)
    return out


def rescale_problems(values: dict[Path, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Return (problem lines, notes) for missing RescaleSlope / RescaleIntercept: the default
    with a note, or a problem per file when another slice states a value that is not it."""
    problems, notes = [], []
    rescaled = {p: v for p, v in values.items() if "ModalityLUTSequence" not in v}
    for keyword, default in RESCALE_DEFAULTS.items():
        missing = [p for p, v in rescaled.items() if keyword not in v]
        if not missing:
            continue
        stated = sorted(
            {n[0] for v in rescaled.values() if (n := parse_numbers(v.get(keyword), 1)[0])}
        )
        if any(n != default for n in stated):
            listed = ", ".join(f"{n:g}" for n in stated)
            problems += [
                f"{p}: {keyword} '': missing while other slices of the series state {listed}; "
                "no default applies"
                for p in missing
            ]
            continue
        notes.append(
            f"{missing[0]}: {keyword} missing in {len(missing)} of {len(values)} file(s) of "
            f"the series, read as {default:g} (the DICOM default)"
        )
    return problems, notes


def series_problems(headers: dict[Path, Dataset]) -> tuple[list[str], list[str]]:
    """Return (problem lines, notes) of the headers of one series: every slice's
    ``slice_problems``, then ``identity_problems`` and ``rescale_problems``."""
    values = {path: values_of(ds) for path, ds in headers.items()}
    problems = [line for path, v in values.items() for line in slice_problems(path, v)]
    problems += identity_problems(values)
    rescale, notes = rescale_problems(values)
    return problems + rescale, notes


def problem_reason(problems: Sequence[str]) -> str:
    """The one-line reason of a series with header problems, for the series listing."""
    if len(problems) == 1:
        return problems[0]
    return f"{problems[0]} (and {len(problems) - 1} more invalid header value(s))"
