"""``ingest.source: tcia``: DICOM CT series per case folder + labels, TCIA's download layout or
what a hospital exports.

Input is ``<images>/PANCREAS_NNNN/<study>/<series>/*.dcm`` with labels
``<labels>/labelNNNN.nii.gz``, or a case folder holding several series of a study side by side
(localizer, thick and thin reconstructions), media exports with a DICOMDIR and extension-less
names, compressed transfer syntaxes, pixel padding, Enhanced CT. Files are read by content;
``pipeline/io/dicom_select.py`` chooses the one axial CT volume by a documented rule (params
``ingest.series`` override it) and the manifest row names the chosen series and every skipped
series and file with the reason.

Labels are ``<labels>/labelNNNN`` or ``<labels>/<case_id>`` as NIfTI (``.nii.gz``, ``.nii``) or
NRRD (3D Slicer's ``.seg.nrrd``, a ``.nrrd`` label image), placed by their own geometry
(``pipeline/io/label_nrrd.py`` for NRRD), or as a DICOM SEG or RTSTRUCT (``.dcm``), or the one
SEG / RTSTRUCT file inside the case folder (``label_path_for``), matched to the CT by its
references and rasterised by its own geometry (``pipeline/io/label_dicom.py``); the checks are
``pipeline/cohort/label_checks.py``.
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
# Label file suffixes, in the order they are looked for (``label_path_for``).
LABEL_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".dcm")


# ----------------------------------------------------------------------------- pure helpers
def label_names(case_id: str) -> list[str]:
    """Return the file names a label of ``case_id`` may have in the labels folder, in order:
    ``labelNNNN`` (NNNN the case id's trailing number) then ``<case_id>``, each with every
    suffix of ``LABEL_SUFFIXES``."""
    match = _CASE_NUMBER.search(case_id)
    stems = [f"label{match.group(1)}", case_id] if match else [case_id]
    return [f"{stem}{suffix}" for stem in stems for suffix in LABEL_SUFFIXES]


def label_path_for(case_id: str, labels_dir: Path, case_dir: Path | None = None) -> Path:
    """Return the label file for ``case_id`` (PANCREAS_NNNN), looked for in this order:

    1. ``labels_dir/<name>`` for every name of ``label_names``: ``labelNNNN`` or ``<case_id>``
       with ``.nii.gz`` / ``.nii`` (NIfTI, TCIA's labels), ``.seg.nrrd`` / ``.nrrd`` (3D Slicer's
       segmentation or a NRRD label image) or ``.dcm`` (a DICOM SEG or RTSTRUCT);
    2. only if none of those exists: the one SEG or RTSTRUCT file below ``case_dir``, a label
       series exported with the CT (PACS and TCIA downloads put it beside the images).

    Raises ``ValueError`` naming the files when a step finds more than one, and, when none
    exists, naming ``labels_dir/labelNNNN.nii.gz`` first, then every name and place looked at.
    """
    names = label_names(case_id)
    found = [labels_dir / n for n in names if (labels_dir / n).is_file()]
    if not found and case_dir is not None:
        found = dicom_labels_in(case_dir)
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise ValueError(f"{case_id}: {len(found)} label files, expected one: {listed}")
    if found:
        return found[0]
    inside = f", nor a SEG / RTSTRUCT file below {case_dir}" if case_dir is not None else ""
    raise ValueError(
        f"{labels_dir / names[0]}: label file not found for case {case_id}: looked for "
        f"{', '.join(names)} in {labels_dir}{inside}"
    )


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
