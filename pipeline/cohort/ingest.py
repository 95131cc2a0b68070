"""``gvae ingest``: TCIA Pancreas-CT DICOM series + NIfTI labels -> HU volumes + manifest.

Input is TCIA's download layout, ``<images>/PANCREAS_NNNN/<study>/<series>/*.dcm`` with labels
``<labels>/labelNNNN.nii.gz``, or what a hospital exports into a case folder: several series of
a study side by side (localizer, thick and thin reconstructions), media exports with a DICOMDIR
and extension-less names, compressed transfer syntaxes, pixel padding, Enhanced CT. Files are
read by content; ``pipeline/io/dicom_select.py`` chooses the one axial CT volume by a
documented rule (params ``ingest.series`` override it) and the manifest row names the chosen
series and every skipped series and file with the reason. For each case this writes
``<out>/<case_id>/image.nii.gz``
(int16 HU, RAS affine) and ``label.nii.gz`` (uint8, same grid), each case folder swapped in
atomically, plus ``<out>/manifest.json``. A bad case becomes an "error" row naming the file and
the problem and never stops the others.

Labels are placed on the CT grid by physical geometry (``pipeline/io/label_geometry.py``; the
checks are ``pipeline/cohort/label_checks.py``), so a label re-saved in another voxel order,
cropped or resampled lands on the same anatomy. TCIA's
own labels carry the DICOM geometry: on PANCREAS_0001 the label's sform and qform equal the
affine ``read_series`` builds (diag(-0.859375, 0.859375, -1), origin 0; instance k+1 at
ImagePositionPatient (0, 0, -k) with orientation (1,0,0,0,-1,0)), so placing it by its affine
gives the InstanceNumber pairing the data README documents, voxel for voxel (0 of 62.9 M voxels
differ, label.nii.gz byte-identical). ``label_geometry: instance`` keeps that pairing for label
sets whose headers are known to be wrong. Either way, the HU inside the aligned label are
checked against soft tissue (pancreas 102.6 +/- 30.9 HU; a flipped label gives sd 53-72, a
transposed one sd 155), a warning or, with ``strict``, an error.

Labels may also be DICOM: a SEG or RTSTRUCT as ``<labels>/labelNNNN.dcm`` or
``<case_id>.dcm``, or the one SEG / RTSTRUCT file inside the case folder (``label_path_for``),
matched to the CT by its references and rasterised by its own geometry
(``pipeline/io/label_dicom.py``), then the same checks. ``source: decathlon`` reads a Medical
Segmentation Decathlon task (NIfTI images in HU) instead and writes the same outputs
(``pipeline/cohort/sources/decathlon_ingest.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.atomic import atomic_dir, ensure_writable_dir, write_json
from pipeline.cli import StageError
from pipeline.cohort.label_checks import implausible_hu, label_hu_stats, label_on_ct
from pipeline.io.dicom_read import SeriesMeta, list_files, read_series
from pipeline.io.label_dicom import dicom_labels_in
from pipeline.io.nifti import write_nifti
from pipeline.params.loader import IngestParams, load_section, with_overrides

MANIFEST = "manifest.json"
IMAGE_FILE = "image.nii.gz"
LABEL_FILE = "label.nii.gz"
_CASE_NUMBER = re.compile(r"(\d+)$")
_HASH_CHUNK = 1 << 20


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


def source_sha256(case_dir: Path, files: list[Path], label: Path) -> str:
    """Return the SHA-256 over (name, bytes) of the case's files in sorted order, label last.

    Names are included so that a renamed or moved file changes the provenance hash too.
    """
    digest = hashlib.sha256()
    entries = [(str(p.relative_to(case_dir)), p) for p in sorted(files)] + [(label.name, label)]
    for name, path in entries:
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def manifest_row(case_id: str, **fields: Any) -> dict[str, Any]:
    row = {
        "case_id": case_id,
        "status": "ok",
        "error": None,
        "shape": None,
        "spacing": None,
        "label_voxels": None,
        "label_placement": None,
        "label_hu_mean": None,
        "label_hu_sd": None,
        "warning": None,
        "source_sha256": None,
        "series": None,
        "skipped_series": None,
        "skipped_files": None,
    }
    row.update(fields)
    return row


def error_row(case_id: str, case_out: Path, exc: BaseException, digest: str | None) -> dict:
    """Return the "error" manifest row of a case that failed with ``exc``, after removing its
    output folder: a stale folder from an earlier run would contradict the manifest."""
    message = str(exc) if isinstance(exc, (ValueError, OSError)) else repr(exc)
    shutil.rmtree(case_out, ignore_errors=True)
    return manifest_row(case_id, status="error", error=message, source_sha256=digest)


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


def check_and_write(
    case_out: Path,
    hu: np.ndarray,
    affine: np.ndarray,
    label: np.ndarray,
    label_file: Path,
    params: IngestParams,
) -> dict[str, Any]:
    """Check the label on the CT grid and write ``case_out`` (image + label) atomically; return
    the manifest fields ``label_voxels``, ``label_hu_mean``, ``label_hu_sd`` and ``warning``.

    Raises ``ValueError`` naming ``label_file`` when no label voxel lands on the grid or, with
    ``params.strict``, when the HU inside the label are not soft tissue.
    """
    voxels = int(np.count_nonzero(label))
    if voxels == 0:
        raise ValueError(f"{label_file}: no label voxel lands on the CT grid")
    mean, sd = label_hu_stats(hu, label)
    warning = implausible_hu(mean, sd, params)
    if warning is not None:
        warning = f"{label_file}: {warning}"
        if params.strict:
            raise ValueError(f"{warning} (strict)")
    with atomic_dir(case_out) as tmp:
        write_nifti(tmp / IMAGE_FILE, hu, affine)
        write_nifti(tmp / LABEL_FILE, label, affine)
    return {
        "label_voxels": voxels,
        "label_hu_mean": round(mean, 2),
        "label_hu_sd": round(sd, 2),
        "warning": warning,
    }


# ----------------------------------------------------------------------------- one case
def ingest_case(case_dir: Path, labels_dir: Path, out_dir: Path, params: IngestParams) -> dict:
    """Ingest one case folder; return its manifest row (never raises for bad input)."""
    case_id = case_dir.name
    digest = None
    try:
        label_file = label_path_for(case_id, labels_dir, case_dir)
        if not label_file.is_file():
            raise ValueError(f"{label_file}: label file not found for case {case_id}")
        digest = source_sha256(case_dir, list_files(case_dir), label_file)
        hu, affine, meta = read_series(
            case_dir,
            params.slice_spacing_tolerance,
            description=params.series.description,
            series_uid=params.series.uids.get(case_id),
            air_hu=params.air_hu,
            outside_fov_below_hu=params.outside_fov_below_hu,
        )
        label, placement = label_on_ct(label_file, affine, meta, params)
        checks = check_and_write(out_dir / case_id, hu, affine, label, label_file, params)
        warnings = [w for w in (defect_warning(case_dir, meta), checks["warning"]) if w]
        checks["warning"] = "; ".join(warnings) or None
    except Exception as exc:  # noqa: BLE001 - any bad input must not stop the other cases
        return error_row(case_id, out_dir / case_id, exc, digest)
    return manifest_row(
        case_id,
        shape=list(meta.shape),
        spacing=[round(s, 6) for s in meta.spacing],
        label_placement=placement,
        source_sha256=digest,
        **checks,
        **series_record(meta),
    )


def _ingest_case_args(args: tuple[Path, Path, Path, IngestParams]) -> dict:
    return ingest_case(*args)


# ----------------------------------------------------------------------------- stage I/O
def find_cases(images: Path) -> list[Path]:
    """Return the case folders directly under ``images`` (non-hidden folders), sorted."""
    if not images.is_dir():
        raise StageError(f"{images}: images folder not found")
    cases = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise StageError(f"{images}: no case folders (expected e.g. PANCREAS_0001/)")
    return cases


def case_jobs(
    params: IngestParams, images: str | Path, labels: str | Path, out_dir: str | Path
) -> tuple[Callable[[Any], dict], list[tuple[str, tuple]]]:
    """Return ``(worker, [(case_id, job), ...])`` in case order: ``worker(job)`` ingests one
    case into ``out_dir`` and returns its manifest row, never raising for bad input. Both are
    picklable, so any executor runs them (``run_jobs``'s processes, ``pipeline.flows.cohort``).

    Raises ``StageError`` naming ``images`` when it holds no case and ``PermissionError``
    naming ``out_dir`` when it is not writable. ``params.source == "decathlon"`` reads the
    cohort with ``ingest_decathlon.decathlon_jobs``.
    """
    if params.source == "decathlon":
        from pipeline.cohort.sources.decathlon_ingest import (
            decathlon_jobs,  # it imports this module
        )

        return decathlon_jobs(params, images, labels, out_dir)
    images, labels, out_dir = Path(images), Path(labels), Path(out_dir)
    cases = find_cases(images)
    ensure_writable_dir(out_dir)
    return _ingest_case_args, [(case.name, (case, labels, out_dir, params)) for case in cases]


def run(params: IngestParams, images: str | Path, labels: str | Path, out_dir: str | Path) -> list:
    """Ingest every case under ``images``; write volumes and ``manifest.json`` to ``out_dir``.

    Returns the manifest rows, sorted by case id. Bad cases are rows with status "error" and are
    reported on stderr, as are HU warnings (errors with ``params.strict``); a
    ``PermissionError`` naming ``out_dir`` is raised if it is not writable. The cases and the
    per-case worker come from ``case_jobs`` (TCIA or Decathlon by ``params.source``).
    """
    worker, jobs = case_jobs(params, images, labels, out_dir)
    return run_jobs(worker, [job for _, job in jobs], params.workers, Path(out_dir))


def write_manifest(rows: list[dict], out_dir: Path) -> list[dict]:
    """Write ``rows`` sorted by case id to ``out_dir/manifest.json``; return them sorted."""
    rows = sorted(rows, key=lambda r: r["case_id"])
    write_json(out_dir / MANIFEST, rows)
    return rows


def run_jobs(worker: Callable[[Any], dict], jobs: list, workers: int, out_dir: Path) -> list:
    """Return ``[worker(job) for job in jobs]`` sorted by case id, run in-process or in
    ``workers`` processes, with a progress bar; the rows are written by ``write_manifest``.
    """
    rows: list[dict] = []
    bar = tqdm(total=len(jobs), desc="ingest", unit="case", file=sys.stderr)
    with bar:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                _collect(worker(job), rows, bar)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                futures = [pool.submit(worker, job) for job in jobs]
                for future in as_completed(futures):
                    _collect(future.result(), rows, bar)
    return write_manifest(rows, out_dir)


def _collect(row: dict, rows: list[dict], bar: tqdm) -> None:
    rows.append(row)
    bar.update(1)
    if row["status"] != "ok":
        bar.write(f"ingest: {row['case_id']}: error: {row['error']}", file=sys.stderr)
    elif row["warning"]:
        bar.write(f"ingest: {row['case_id']}: warning: {row['warning']}", file=sys.stderr)


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``gvae ingest`` options; unset ones fall back to the params ``ingest`` section."""
    parser.add_argument(
        "--source", choices=("tcia", "decathlon"), help="input layout (default: ingest.source)"
    )
    parser.add_argument(
        "--images",
        help="TCIA image folder holding PANCREAS_NNNN/ case folders (decathlon: imagesTr/)",
    )
    parser.add_argument(
        "--labels",
        help="folder holding labelNNNN.nii.gz or .dcm (SEG, RTSTRUCT) files (decathlon: labelsTr/)",
    )
    parser.add_argument("--out", required=True, help="output folder (one subfolder per case)")
    parser.add_argument("--workers", type=int, help="worker processes (1 = in-process)")
    parser.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit non-zero if any case failed, counting labels whose HU are not soft tissue "
        "(good cases and manifest are still written)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the stage from parsed CLI arguments; return the exit code."""
    params: IngestParams = load_section(args.params, "ingest")
    params = with_overrides(
        params,
        {
            "source": args.source,
            "images": args.images,
            "labels": args.labels,
            "workers": args.workers,
            "strict": args.strict,
        },
    )
    rows = run(params, params.images, params.labels, args.out)
    failed = [r["case_id"] for r in rows if r["status"] != "ok"]
    print(
        f"ingest: {len(rows) - len(failed)} of {len(rows)} case(s) written to {args.out}",
        file=sys.stderr,
    )
    if failed and params.strict:
        print(f"ingest: --strict: failed case(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
