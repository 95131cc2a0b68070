"""``gvae ingest`` with ``ingest.source: decathlon``: a Medical Segmentation Decathlon task.

``images`` is the task's imagesTr/ (CT in HU, NIfTI), ``labels`` its labelsTr/ (same names;
layout and label values in ``pipeline/cohort/sources/decathlon.py``). Every case goes through what a
TCIA case goes through after its DICOM read: the label is placed on the image grid by physical
geometry (``place_label``: exact copy, nearest neighbour, or rejected when it reaches outside
the image), the HU under it are checked (``check_and_write``), and the same files and manifest
keys are written: ``<out>/<case_id>/image.nii.gz`` (int16 HU, the image's own affine),
``label.nii.gz`` (uint8, same grid) and ``<out>/manifest.json``. A bad case is an "error" row
naming the file and never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import ensure_writable_dir
from pipeline.cli import StageError
from pipeline.cohort.ingest import (
    check_and_write,
    error_row,
    manifest_row,
    run_jobs,
    source_sha256,
)
from pipeline.cohort.label_checks import place_by_affine
from pipeline.cohort.sources.decathlon import (
    DecathlonCase,
    find_decathlon_cases,
    pancreas_mask,
    read_hu_volume,
)
from pipeline.io.nifti import load_label
from pipeline.params.loader import IngestParams


def decathlon_label(
    case: DecathlonCase, shape: tuple, affine: np.ndarray, params: IngestParams
) -> tuple[np.ndarray, str]:
    """Return ``(0/1 pancreas mask on the image grid, placement)`` of ``case``'s label file;
    raises ``ValueError`` naming it when missing, without pancreas values or off the image."""
    raw, label_affine = load_label(case.label)  # names the file when missing or unreadable
    wanted = params.decathlon.pancreas_values
    mask = pancreas_mask(raw, wanted)
    if not mask.any():
        present = sorted(int(v) for v in np.unique(raw))
        raise ValueError(
            f"{case.label}: no voxel holds a pancreas value {list(wanted)} (values {present})"
        )
    return place_by_affine(mask, label_affine, shape, affine, params, case.label)


def ingest_decathlon_case(case: DecathlonCase, out_dir: Path, params: IngestParams) -> dict:
    """Ingest one Decathlon case; return its manifest row (never raises for bad input)."""
    digest = None
    try:
        if not case.label.is_file():
            raise ValueError(f"{case.label}: label file not found for case {case.case_id}")
        digest = source_sha256(case.image.parent, [case.image], case.label)
        hu, affine = read_hu_volume(case.image)
        label, placement = decathlon_label(case, hu.shape, affine, params)
        checks = check_and_write(out_dir / case.case_id, hu, affine, label, case.label, params)
    except Exception as exc:  # noqa: BLE001 - any bad input must not stop the other cases
        return error_row(case.case_id, out_dir / case.case_id, exc, digest)
    spacing = [round(float(s), 6) for s in np.linalg.norm(affine[:3, :3], axis=0)]
    return manifest_row(
        case.case_id,
        shape=list(hu.shape),
        spacing=spacing,
        label_placement=placement,
        **checks,
        source_sha256=digest,
    )


def _ingest_decathlon_args(args: tuple[DecathlonCase, Path, IngestParams]) -> dict:
    return ingest_decathlon_case(*args)


def decathlon_jobs(
    params: IngestParams, images: str | Path, labels: str | Path, out_dir: str | Path
) -> tuple[Callable[[Any], dict], list[tuple[str, tuple]]]:
    """Return ``(worker, [(case_id, job), ...])`` for every image in ``images`` (imagesTr/) with its
    label in ``labels`` (labelsTr/), as ``ingest.case_jobs`` does for TCIA.

    Raises ``StageError`` naming the folder when it is missing or holds no NIfTI image, and
    ``PermissionError`` naming ``out_dir`` when it is not writable.
    """
    out_dir = Path(out_dir)
    try:
        cases = find_decathlon_cases(images, labels)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    ensure_writable_dir(out_dir)
    return _ingest_decathlon_args, [(case.case_id, (case, out_dir, params)) for case in cases]


def run_decathlon(
    params: IngestParams, images: str | Path, labels: str | Path, out_dir: str | Path
) -> list:
    """Ingest every image in ``images`` (imagesTr/) with its label in ``labels`` (labelsTr/);
    write volumes and ``manifest.json`` to ``out_dir`` and return the rows by case id.

    Errors as ``decathlon_jobs``.
    """
    worker, jobs = decathlon_jobs(params, images, labels, out_dir)
    return run_jobs(worker, [job for _, job in jobs], params.workers, Path(out_dir))
