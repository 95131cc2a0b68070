"""Files beside the chosen series that look like members of it but could not be read as such.

Nothing in the chosen series' folder is dropped silently. A slice whose file is truncated inside
its header no longer parses as an image; read by content it would only be a ``skipped_files``
entry, and losing the first or last slice leaves a shorter volume that nothing else flags. A
slice whose SeriesInstanceUID was rewritten forms a series of its own that continues the stack.
Both are found here and named; ``ingest.damaged_members`` makes them an error (the default) or a
warning, and a missing-slice error names the unreadable file that sits in the gap.

A skipped file is a *damaged member* when it lies in a folder of the series and either claims
to be DICOM (the PS3.10 signature, ``dicom_read.DamagedFileError``) or is named like the
series' files with the digits set aside (``1-###.dcm``, ``IM######``); a notes.txt or README
beside the images is neither. So is a CT image whose header lacks attributes its IOD requires
(``cut_short``): cut inside its header, it parsed up to the cut.

Another CT series is a *stray* part of the chosen one when it lies in the same folder with
the same frame of reference, orientation, pixel spacing and matrix, and its slices continue the
stack on its lattice from one end (a single image, or the same step). A thick reconstruction
(another step) or an overlapping phase (positions inside the stack) is not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pipeline.io.dicom_geometry import GEOMETRY_ATOL, slice_normal
from pipeline.io.dicom_multiframe import is_enhanced
from pipeline.io.dicom_select import SeriesSummary

_DIGITS = re.compile(r"\d+")
_SAME_GEOMETRY = ("ImageOrientationPatient", "PixelSpacing")


def name_pattern(name: str) -> str:
    """``name`` with every run of digits replaced by "#": 1-001.dcm -> #-#.dcm."""
    return _DIGITS.sub("#", name)


def damaged_members(skipped_files: Sequence[dict], members: Sequence[Path]) -> list[dict]:
    """Return the entries of ``skipped_files`` that look like damaged members of the series
    whose files are ``members`` (module docstring), in their order."""
    folders = {Path(p).parent for p in members}
    patterns = {name_pattern(Path(p).name) for p in members}
    own = {str(p) for p in members}
    return [
        entry
        for entry in skipped_files
        if entry["file"] not in own
        and Path(entry["file"]).parent in folders
        and (entry.get("damaged") or name_pattern(Path(entry["file"]).name) in patterns)
    ]


def cut_short(headers: dict[Path, Dataset], required: Sequence[str]) -> list[dict]:
    """Return a ``skipped_files``-like entry, flagged damaged, for every CT image header that
    lacks attributes its IOD requires (``required``): a file cut inside its header parses up to
    the cut, so it keeps its Modality, and maybe its SeriesInstanceUID (whole or in part), and
    loses the rest. Other objects (SR, KO, PR) are not CT and never count."""
    out = []
    for path, ds in headers.items():
        if str(ds.get("Modality", "")).upper() != "CT" or _is_localizer(ds) or is_enhanced(ds):
            continue  # an Enhanced CT keeps its geometry in functional groups
        missing = [kw for kw in required if kw not in ds or ds[kw].VM == 0]
        if missing:
            reason = f"CT header without {', '.join(missing)}: cut short or damaged"
            out.append({"file": str(path), "reason": reason, "damaged": True})
    return out


def _is_localizer(ds: Dataset) -> bool:
    value = ds.get("ImageType") or []
    return "LOCALIZER" in [str(v).upper() for v in ([value] if isinstance(value, str) else value)]


def member_lines(entries: Sequence[dict]) -> list[str]:
    """One line per damaged member: "<file>: <why it did not read>"."""
    return [f"{entry['file']}: {entry['reason']}" for entry in entries]


def _matches(ds: Dataset, ref: Dataset) -> bool:
    """Whether ``ds`` is a CT slice on the same plane geometry and matrix as ``ref``."""
    try:
        if str(ds.get("Modality", "")).upper() != "CT":
            return False
        if str(ds.get("FrameOfReferenceUID", "")) != str(ref.get("FrameOfReferenceUID", "")):
            return False
        if (int(ds.Rows), int(ds.Columns)) != (int(ref.Rows), int(ref.Columns)):
            return False
        return all(
            np.allclose(
                np.asarray(ds[kw].value, float), np.asarray(ref[kw].value, float), atol=1e-4
            )
            for kw in _SAME_GEOMETRY
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def _lattice_index(ds: Dataset, ref: Dataset, normal: np.ndarray, step: float) -> int | None:
    """The index of ``ds``'s slice on the lattice of the stack starting at ``ref``, or None
    when it lies off the lattice or off the stack's in-plane origin."""
    try:
        offset = np.asarray(ds.ImagePositionPatient, float) - np.asarray(
            ref.ImagePositionPatient, float
        )
    except (AttributeError, TypeError, ValueError):
        return None
    along = float(offset @ normal)
    lateral = float(np.linalg.norm(offset - along * normal))
    index = round(along / step)
    if lateral > 0.05 * step or abs(along - index * step) > 0.05 * step + GEOMETRY_ATOL:
        return None
    return index


def stray_members(
    chosen: SeriesSummary, others: Sequence[SeriesSummary], headers: dict[Path, Dataset]
) -> list[str]:
    """Return one line per file of another series that continues the chosen series' stack
    (module docstring), naming the file and its SeriesInstanceUID."""
    if not chosen.step_mm or len(chosen.files) < 2:
        return []
    by_position = sorted(chosen.files, key=lambda p: _projection(headers[p]))
    first = headers[by_position[0]]
    normal = slice_normal(first.ImageOrientationPatient)
    folders, n = {p.parent for p in chosen.files}, len(chosen.files)
    lines = []
    for other in others:
        if other.step_mm is not None and abs(other.step_mm - chosen.step_mm) > 0.01:
            continue  # a reconstruction with another step
        files = [p for p in other.files if p.parent in folders and p in headers]
        if not files or len(files) != len(other.files):
            continue
        if not all(_matches(headers[p], first) for p in files):
            continue
        index = sorted(
            i
            for p in files
            if (i := _lattice_index(headers[p], first, normal, chosen.step_mm)) is not None
        )
        if len(index) != len(files) or index != list(range(index[0], index[0] + len(index))):
            continue
        if index[0] == n or index[-1] == -1:
            lines += [
                f"{p}: SeriesInstanceUID '{other.uid}': continues the stack of series "
                f"{chosen.uid} (same frame of reference and geometry, next position on its "
                "lattice): a split series or a rewritten UID"
                for p in files
            ]
    return lines


def _projection(ds: Dataset) -> float:
    """Position of ``ds`` along its own slice normal (for sorting one series' files)."""
    normal = slice_normal(ds.ImageOrientationPatient)
    return float(np.asarray(ds.ImagePositionPatient, float) @ normal)
