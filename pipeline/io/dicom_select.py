"""Choose the one axial CT volume among the series that share a case folder.

Hospital exports put every series of a study side by side: localizers (scouts), thick and thin
reconstructions, reformats, dose reports. Files are grouped by SeriesInstanceUID (PS3.3
C.7.3.1), never by folder, and each series is either a candidate or skipped with a reason:

- Modality other than CT (PS3.3 C.7.3.1);
- ImageType with the value LOCALIZER (PS3.3 C.8.2.1.1.1: the third value of a CT ImageType);
- a single image (a volume needs at least two slices);
- a slice normal (row x column cosine, PS3.3 C.7.6.2.1.1) whose largest component is not the
  patient z axis, i.e. a sagittal or coronal stack, not an axial one;
- missing geometry attributes, a header value that fails ``dicom_validate`` (each named in
  ``SeriesSummary.problems``), inconsistent matrix / spacing / orientation, duplicate positions,
  a missing slice, a non-uniform step or gantry tilt (``order_slices``).

The last kind are *defects* (``SeriesSummary.defect``): an axial CT series that should have been
a volume and is broken. The manifest flags them, because a defective thin reconstruction loses
the choice to an intact thick one without anything else going wrong.

Choice rule among the candidates (after the optional overrides, a SeriesInstanceUID or a
SeriesDescription regex): the thinnest slice step (to 0.01 mm), then the most slices, then the
lowest SeriesNumber, then the lowest SeriesInstanceUID as text, so the choice never depends on
file order. Thin first because the thin reconstruction of a study is the one a 3D pipeline
wants; its coverage matches the thick one in every export we know of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from pipeline.io.dicom_geometry import SeriesError, check_consistent, order_slices, slice_normal
from pipeline.io.dicom_multiframe import enhanced_geometry, frame_step, is_enhanced
from pipeline.io.dicom_validate import problem_reason, series_problems

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
_PLANES = ("sagittal", "coronal", "axial")  # dominant component x / y / z of the normal
_STEP_DECIMALS = 2  # steps equal to 0.01 mm count as equal: DS values are rounded on write


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a case folder: what the choice and the manifest need."""

    uid: str
    description: str
    number: int | None  # SeriesNumber, absent in many anonymised exports
    files: tuple[Path, ...]
    step_mm: float | None  # slice step along the normal; None when not a usable volume
    reason: str | None  # why it was skipped; None for a candidate
    defect: bool = False  # skipped as a broken axial CT volume (geometry), not for what it is
    # One line per invalid header value (file, attribute, value), when that is the reason.
    problems: tuple[str, ...] = ()
    # Defaults the validation took for a usable series (a missing RescaleSlope read as 1).
    notes: tuple[str, ...] = ()

    def record(self) -> dict:
        """Return the manifest entry of this series (JSON-ready)."""
        entry = {"uid": self.uid, "description": self.description, "slices": len(self.files)}
        if self.step_mm is not None:
            entry["slice_step_mm"] = round(self.step_mm, 6)
        if self.reason is not None:
            entry["reason"] = self.reason
        if self.defect:
            entry["defect"] = True
        return entry


def _series_number(ds: Dataset) -> int | None:
    value = ds.get("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _plane_reason(normal: np.ndarray) -> str | None:
    """Why a stack with this slice normal is not axial, or ``None`` if it is."""
    plane = _PLANES[int(np.argmax(np.abs(normal)))]
    if plane == "axial":
        return None
    return f"{plane} orientation (slice normal {np.round(normal, 3).tolist()}), not axial"


class Verdict(NamedTuple):
    """``skip_reason``'s answer on one series."""

    reason: str | None  # why it is not an axial CT volume; None for a candidate
    step: float | None  # slice step along the normal, for a candidate
    defect: bool = False  # the reason is a defect of a would-be volume
    problems: tuple[str, ...] = ()  # invalid header values, one line each
    notes: tuple[str, ...] = ()  # defaults the validation took (a missing RescaleSlope: 1)


def _enhanced_reason(items: list[tuple[Path, Dataset]], tolerance: float) -> Verdict:
    """``skip_reason`` for a series holding an enhanced multi-frame image."""
    if len(items) > 1:
        return Verdict(
            f"a multi-frame image with {len(items) - 1} other file(s) in one series", None, True
        )
    path, ds = items[0]
    try:
        orientation, _, _ = enhanced_geometry(path, ds)
        plane = _plane_reason(slice_normal(orientation))
        if plane is not None:
            return Verdict(plane, None)
        return Verdict(None, frame_step(path, ds, tolerance))
    except ValueError as exc:
        return Verdict(str(exc), None, True, tuple(getattr(exc, "problems", ())))


def _kind_reason(items: list[tuple[Path, Dataset]]) -> str | None:
    """Why the series is no CT image stack at all (modality, localizer), or None."""
    modalities = {str(ds.get("Modality", "")).upper() for _, ds in items}
    if "CT" not in modalities:
        return f"Modality {', '.join(sorted(modalities)) or 'missing'}, not CT"
    for path, ds in items:
        value = ds.get("ImageType") or []
        image_type = [str(v).upper() for v in ([value] if isinstance(value, str) else value)]
        if "LOCALIZER" in image_type:
            shown = "\\".join(image_type)
            return f"localizer (ImageType {shown}, {path.name})"
    return None


def skip_reason(headers: dict[Path, Dataset], tolerance: float) -> Verdict:
    """Return the ``Verdict`` on one series: why it is not an axial CT volume (or None), its
    slice step, whether the reason is a defect, and the invalid header values.

    ``headers`` are the files of one series; see the module docstring for the reasons. The
    header values are validated (``dicom_validate``) before anything computes with them.
    """
    items = list(headers.items())
    kind = _kind_reason(items)
    if kind is not None:
        return Verdict(kind, None)
    if any(is_enhanced(ds) for _, ds in items):
        return _enhanced_reason(items, tolerance)
    for path, ds in items:
        missing = [kw for kw in REQUIRED if kw not in ds or ds[kw].VM == 0]
        if missing:
            return Verdict(
                f"{path}: missing required attribute(s) {', '.join(missing)}", None, True
            )
    if len(items) < 2:
        return Verdict(f"a single image ({items[0][0].name}), not a volume", None)
    problems, notes = series_problems(headers)
    if problems:
        return Verdict(problem_reason(problems), None, True, tuple(problems))
    try:
        check_consistent(headers)
        normal = slice_normal(items[0][1].ImageOrientationPatient)
    except ValueError as exc:
        return Verdict(str(exc), None, True)
    plane = _plane_reason(normal)
    if plane is not None:
        return Verdict(plane, None)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    try:
        _, step = order_slices(positions, normal, [str(p) for p, _ in items], tolerance)
    except SeriesError as exc:
        return Verdict(str(exc), None, True)
    return Verdict(None, float(step), notes=tuple(notes))


def group_by_series(headers: dict[Path, Dataset]) -> dict[str, list[Path]]:
    """Group file paths by SeriesInstanceUID (PS3.3 C.7.3.1), preserving input order."""
    groups: dict[str, list[Path]] = {}
    for path, ds in headers.items():
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return groups


def summarize(headers: dict[Path, Dataset], tolerance: float) -> list[SeriesSummary]:
    """Group ``headers`` by SeriesInstanceUID and summarise each series, sorted by UID."""
    groups = group_by_series(headers)
    out = []
    for uid in sorted(groups):
        group = {path: headers[path] for path in groups[uid]}
        first = group[groups[uid][0]]
        verdict = skip_reason(group, tolerance)
        out.append(
            SeriesSummary(
                uid=uid,
                description=str(first.get("SeriesDescription", "") or ""),
                number=_series_number(first),
                files=tuple(group),
                step_mm=verdict.step,
                reason=verdict.reason,
                defect=verdict.defect,
                problems=verdict.problems,
                notes=verdict.notes,
            )
        )
    return out


def choice_key(series: SeriesSummary) -> tuple:
    """Sort key of the default rule: thinnest step, most slices, lowest number, lowest UID."""
    number = series.number if series.number is not None else np.iinfo(np.int64).max
    return (round(series.step_mm or 0.0, _STEP_DECIMALS), -len(series.files), number, series.uid)


def _listing(series: list[SeriesSummary]) -> str:
    return "; ".join(
        f"{s.uid} ('{s.description}', {len(s.files)} files)" + (f": {s.reason}" if s.reason else "")
        for s in series
    )


def choose_series(
    summaries: list[SeriesSummary],
    description: str | None = None,
    series_uid: str | None = None,
) -> tuple[SeriesSummary, list[SeriesSummary]]:
    """Return (the chosen series, every other series with the reason it was not chosen).

    ``series_uid`` picks that series (an error if it is absent or unusable); otherwise
    ``description`` (a regex, ``re.search`` on SeriesDescription) narrows the candidates; then
    ``choice_key`` decides. Raises ``ValueError`` listing every series when nothing is usable.
    """
    candidates = [s for s in summaries if s.reason is None]
    if series_uid is not None:
        match = [s for s in summaries if s.uid == series_uid]
        if not match:
            raise ValueError(
                f"series {series_uid} (params) not found; present: {_listing(summaries)}"
            )
        if match[0].reason is not None:
            raise ValueError(f"series {series_uid} (params) is not usable: {match[0].reason}")
        candidates = match
    elif description is not None:
        pattern = re.compile(description)
        candidates = [s for s in candidates if pattern.search(s.description)]
        if not candidates:
            raise ValueError(
                f"no usable series matches SeriesDescription /{description}/; present: "
                f"{_listing(summaries)}"
            )
    if not candidates:
        raise ValueError(f"no usable axial CT series: {_listing(summaries)}")
    chosen = min(candidates, key=choice_key)
    skipped = [
        s
        if s.reason is not None
        else replace(s, reason=_why_not(s, chosen, description, series_uid))
        for s in summaries
        if s is not chosen
    ]
    return chosen, skipped


def _why_not(
    series: SeriesSummary, chosen: SeriesSummary, description: str | None, series_uid: str | None
) -> str:
    """The reason a usable series was not chosen, for the manifest."""
    if series_uid is not None:
        return f"params name series {series_uid} for this case"
    if description is not None and not re.search(description, series.description):
        return f"SeriesDescription does not match /{description}/ (params)"
    return f"choice rule (thinnest step, most slices) prefers {chosen.uid}"
