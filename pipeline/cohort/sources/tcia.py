"""``ingest.source: tcia``: DICOM CT series per case folder + labels, TCIA's download layout or
what a hospital exports.

Input is ``<images>/PANCREAS_NNNN/<study>/<series>/*.dcm`` with labels
``<labels>/labelNNNN.nii.gz``, or a case folder holding several series of a study side by side
(localizer, thick and thin reconstructions), media exports with a DICOMDIR and extension-less
names, compressed transfer syntaxes, pixel padding, Enhanced CT. Files are read by content;
``pipeline/io/dicom_select.py`` chooses the one axial CT volume by a documented rule (params
``ingest.series`` override it) and the manifest row names the chosen series and every skipped
series and file with the reason.

Labels are NIfTI (placed by their affine), or a DICOM SEG or RTSTRUCT as
``<labels>/labelNNNN.dcm`` or ``<case_id>.dcm``, or the one SEG / RTSTRUCT file inside the case
folder (``label_path_for``), matched to the CT by its references and rasterised by its own
geometry (``pipeline/io/label_dicom.py``); the checks are ``pipeline/cohort/label_checks.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cohort.label_checks import label_on_ct
from pipeline.cohort.sources.base import CaseVolume, Located
from pipeline.errors import StageError
from pipeline.io.dicom_read import SeriesMeta, list_files, read_series
from pipeline.io.label_dicom import dicom_labels_in
from pipeline.params.ingest import IngestParams

_CASE_NUMBER = re.compile(r"(\d+)$")


# ----------------------------------------------------------------------------- pure helpers
def label_path_for(case_id: str, labels_dir: Path, case_dir: Path | None = None) -> Path:
    """Return the label file for ``case_id`` (PANCREAS_NNNN), looked for in this order:

    1. ``labels_dir/labelNNNN.nii.gz`` or ``.nii`` (TCIA's NIfTI labels),
       ``labels_dir/labelNNNN.dcm`` or ``labels_dir/<case_id>.dcm`` (a DICOM SEG or RTSTRUCT);
    2. only if none of those exists: the one SEG or RTSTRUCT file below ``case_dir``, a label
       series exported with the CT (PACS and TCIA downloads put it beside the images).

    Raises ``ValueError`` naming the files when a step finds more than one; when none exists
    the missing ``labelNNNN.nii.gz`` is returned, for the caller's "not found" error.
    """
    match = _CASE_NUMBER.search(case_id)
    stem = f"label{match.group(1)}" if match else None
    names = [f"{case_id}.dcm"]
    if stem:
        names = [f"{stem}.nii.gz", f"{stem}.nii", f"{stem}.dcm", *names]
    found = [labels_dir / n for n in names if (labels_dir / n).is_file()]
    if not found and case_dir is not None:
        found = dicom_labels_in(case_dir)
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise ValueError(f"{case_id}: {len(found)} label files, expected one: {listed}")
    if found:
        return found[0]
    if stem is None:
        raise ValueError(f"{case_id}: case folder name has no trailing case number")
    return labels_dir / f"{stem}.nii.gz"


def defect_warning(case_dir: Path, meta: SeriesMeta) -> str | None:
    """Return a warning naming every broken axial CT series skipped in ``case_dir`` (a missing
    slice, duplicate positions, inconsistent geometry; ``dicom_select``'s defects), or ``None``.

    The volume still comes from an intact series, but a user who exported a thin reconstruction
    must learn that the thick one was read instead.
    """
    broken = [s for s in meta.skipped_series if s.get("defect")]
    if not broken:
        return None
    listed = "; ".join(
        f"{s['uid']} ('{s['description']}', {s['slices']} files): {s['reason']}" for s in broken
    )
    return f"{case_dir}: broken series skipped, volume read from {meta.series_uid}: {listed}"


def series_record(meta: SeriesMeta) -> dict[str, Any]:
    """Return the manifest fields on the chosen series, the skipped series and skipped files."""
    return {
        "series": {
            "uid": meta.series_uid,
            "description": meta.description,
            "slices": meta.shape[2],
            "spacing": [round(s, 6) for s in meta.spacing],
        },
        "skipped_series": list(meta.skipped_series),
        "skipped_files": list(meta.skipped_files),
    }


# ----------------------------------------------------------------------------- stage I/O
def find_cases(images: Path) -> list[Path]:
    """Return the case folders directly under ``images`` (non-hidden folders), sorted."""
    if not images.is_dir():
        raise StageError(f"{images}: images folder not found")
    cases = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise StageError(f"{images}: no case folders (expected e.g. PANCREAS_0001/)")
    return cases


@dataclass(frozen=True)
class TciaCase:
    """One case folder; its name is the case id."""

    folder: Path

    @property
    def case_id(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class TciaSource:
    """DICOM case folders under ``images``, labels in ``labels`` (or inside the case folder)."""

    params: IngestParams
    images: Path
    labels: Path
    name = "tcia"

    def cases(self) -> list[TciaCase]:
        """Every case folder directly under ``images``, sorted."""
        return [TciaCase(folder) for folder in find_cases(Path(self.images))]

    def locate(self, case: TciaCase) -> Located:
        """The case folder's files and its label (``label_path_for``'s order)."""
        label = label_path_for(case.case_id, Path(self.labels), case.folder)
        if not label.is_file():
            raise ValueError(f"{label}: label file not found for case {case.case_id}")
        return Located(case.folder, list_files(case.folder), label)

    def read(self, case: TciaCase, label: Path) -> CaseVolume:
        """The chosen series in HU and ``label`` placed on it by geometry."""
        params = self.params
        hu, affine, meta = read_series(
            case.folder,
            params.slice_spacing_tolerance,
            description=params.series.description,
            series_uid=params.series.uids.get(case.case_id),
            air_hu=params.air_hu,
            outside_fov_below_hu=params.outside_fov_below_hu,
            damaged_members=params.damaged_members,
        )
        placed = label_on_ct(label, affine, meta, params)
        warnings = [*meta.warnings, defect_warning(case.folder, meta), *placed.warnings]
        return CaseVolume(
            hu,
            affine,
            placed.mask,
            placed.placement,
            spacing=[round(s, 6) for s in meta.spacing],
            warning="; ".join(w for w in warnings if w) or None,
            record={**series_record(meta), **placed.record},
        )


SOURCE = TciaSource

