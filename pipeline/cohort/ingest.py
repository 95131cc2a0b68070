"""The ingest core every cohort source shares: cases in, HU volumes + label + manifest out.

A source (``pipeline/cohort/sources/``: ``tcia`` for DICOM case folders, ``decathlon`` for a
Medical Segmentation Decathlon task) lists its cases, locates each case's files and reads the
volume with its label placed on the CT grid by physical geometry. This module does the rest the
same way for every source: the SHA-256 provenance of the input files, the label checks (no
label voxel on the grid; HU inside the label that are not soft tissue, a warning or, with
``strict``, an error), ``<out>/<case_id>/image.nii.gz`` (int16 HU, RAS affine) and
``label.nii.gz`` (uint8, same grid) swapped in atomically per case, worker processes, and
``<out>/manifest.json``. A bad case becomes an "error" row naming the file and the problem and
never stops the others; where the problem is invalid header values or damaged files, the row's
"problems" lists one line each (file, attribute, value), printed one per line on stderr too.
Warnings of the read (defaults taken, files passed over, a label grid that ends inside the
organ: ``label_coverage``) and of the HU check join in the row's "warning"; Python warnings
raised while reading become lines of it too, never raw stderr. With ``strict`` every warning
is an error and the case is not written.

Labels are placed by geometry, so a label re-saved in another voxel order, cropped or resampled
lands on the same anatomy. TCIA's own labels carry the DICOM geometry: on PANCREAS_0001 the
label's sform and qform equal the affine ``read_series`` builds (diag(-0.859375, 0.859375, -1),
origin 0; instance k+1 at ImagePositionPatient (0, 0, -k) with orientation (1,0,0,0,-1,0)), so
placing it by its affine gives the InstanceNumber pairing the data README documents, voxel for
voxel (0 of 62.9 M voxels differ, label.nii.gz byte-identical). ``label_geometry: instance``
keeps that pairing for label sets whose headers are known to be wrong. Either way the HU inside
the aligned label are checked against soft tissue (pancreas 102.6 +/- 30.9 HU; a flipped label
gives sd 53-72, a transposed one sd 155).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.atomic import atomic_dir, ensure_writable_dir, write_json
from pipeline.cohort.label_checks import implausible_hu, label_hu_stats
from pipeline.cohort.sources.base import CohortSource
from pipeline.cohort.sources.registry import source_class
from pipeline.cohort.sources.tcia import TciaCase, TciaSource
from pipeline.io.dicom_file import library_warnings
from pipeline.io.dicom_geometry import SeriesError, check_affine
from pipeline.io.nifti import write_nifti
from pipeline.params.loader import IngestParams

MANIFEST = "manifest.json"
IMAGE_FILE = "image.nii.gz"
LABEL_FILE = "label.nii.gz"
_HASH_CHUNK = 1 << 20


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
    output folder: a stale folder from an earlier run would contradict the manifest.

    When ``exc`` carries ``problems`` (one line per invalid header value or damaged file, each
    naming the file, the attribute and the value) the row lists them under "problems"; rows
    without any keep the keys every row has.
    """
    message = str(exc) if isinstance(exc, (ValueError, OSError)) else repr(exc)
    shutil.rmtree(case_out, ignore_errors=True)
    row = manifest_row(case_id, status="error", error=one_line(message), source_sha256=digest)
    problems = [one_line(p) for p in getattr(exc, "problems", ()) or ()]
    if problems:
        row["problems"] = problems
    return row


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces: a library's multi-line message
    (pylibjpeg's decoder errors) must stay one line of the manifest and of stderr."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def check_grid(affine: np.ndarray, where: Path) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``affine`` is a finite voxel-to-mm matrix
    with perpendicular axes of positive length: the last guard, for every source, before a
    volume is written (the DICOM reader checks its own affine more strictly, ``check_affine``).
    """
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    try:
        check_affine(affine, spacing, str(where), proper=False)
    except SeriesError as exc:
        raise ValueError(str(exc)) from exc


def check_and_write(
    case_out: Path,
    hu: np.ndarray,
    affine: np.ndarray,
    label: np.ndarray,
    label_file: Path,
    params: IngestParams,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """Check the label on the CT grid and write ``case_out`` (image + label) atomically; return
    the manifest fields ``label_voxels``, ``label_hu_mean``, ``label_hu_sd`` and ``warning``
    (``warnings`` from the read, then the HU check's, joined by "; ").

    Raises ``ValueError`` naming ``label_file`` when no label voxel lands on the grid, naming
    ``case_out`` when the affine is no grid (``check_grid``) and, with ``params.strict``,
    listing every warning: strict writes no case that needed one.
    """
    voxels = int(np.count_nonzero(label))
    if voxels == 0:
        raise ValueError(f"{label_file}: no label voxel lands on the CT grid")
    check_grid(affine, case_out)
    mean, sd = label_hu_stats(hu, label)
    hu_warning = implausible_hu(mean, sd, params)
    found = [one_line(w) for w in warnings if w]
    if hu_warning is not None:
        found.append(f"{label_file}: {hu_warning}")
    if found and params.strict:
        raise ValueError(f"{'; '.join(found)} (strict)")
    with atomic_dir(case_out) as tmp:
        write_nifti(tmp / IMAGE_FILE, hu, affine)
        write_nifti(tmp / LABEL_FILE, label, affine)
    return {
        "label_voxels": voxels,
        "label_hu_mean": round(mean, 2),
        "label_hu_sd": round(sd, 2),
        "warning": "; ".join(found) or None,
    }


# ----------------------------------------------------------------------------- one case
def ingest_one(source: CohortSource, case: Any, out_dir: Path) -> dict:
    """Ingest one case of ``source`` into ``out_dir/<case_id>``; return its manifest row
    (never raises for bad input: the row is an "error" row naming the file).

    Python warnings raised while reading (pydicom, nibabel, numpy) never reach stderr: each
    becomes a line of the case's warning naming the case folder (``library_warnings``).
    """
    digest = None
    case_out = Path(out_dir) / case.case_id
    try:
        located = source.locate(case)
        digest = source_sha256(located.root, located.files, located.label)
        leaked: list[str] = []
        with library_warnings(leaked, located.root):
            volume = source.read(case, located.label)
        checks = check_and_write(
            case_out,
            volume.hu,
            volume.affine,
            volume.label,
            located.label,
            source.params,
            [volume.warning, *leaked],
        )
    except Exception as exc:  # noqa: BLE001 - any bad input must not stop the other cases
        return error_row(case.case_id, case_out, exc, digest)
    return manifest_row(
        case.case_id,
        shape=list(volume.hu.shape),
        spacing=volume.spacing,
        label_placement=volume.placement,
        source_sha256=digest,
        **checks,
        **volume.record,
    )


def ingest_case(case_dir: Path, labels_dir: Path, out_dir: Path, params: IngestParams) -> dict:
    """Ingest one DICOM case folder (the ``tcia`` source); return its manifest row."""
    return ingest_one(TciaSource(params, case_dir.parent, labels_dir), TciaCase(case_dir), out_dir)


def _ingest_one_args(args: tuple[CohortSource, Any, Path]) -> dict:
    return ingest_one(*args)


# ----------------------------------------------------------------------------- stage I/O
def case_jobs(
    params: IngestParams, images: str | Path, labels: str | Path, out_dir: str | Path
) -> tuple[Callable[[Any], dict], list[tuple[str, tuple]]]:
    """Return ``(worker, [(case_id, job), ...])`` in case order: ``worker(job)`` ingests one
    case of the ``params.source`` source into ``out_dir`` and returns its manifest row, never
    raising for bad input. Both are picklable, so any executor runs them (``run_jobs``'s
    processes, ``pipeline.flows.cohort``).

    Raises ``ParamsError`` for an unknown source, ``StageError`` naming ``images`` when it holds
    no case and ``PermissionError`` naming ``out_dir`` when it is not writable.
    """
    source = source_class(params.source)(params, Path(images), Path(labels))
    cases = source.cases()
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir)
    return _ingest_one_args, [(case.case_id, (source, case, out_dir)) for case in cases]


def run(params: IngestParams, images: str | Path, labels: str | Path, out_dir: str | Path) -> list:
    """Ingest every case of ``images`` + ``labels``; write volumes and ``manifest.json`` to
    ``out_dir``.

    Returns the manifest rows, sorted by case id. Bad cases are rows with status "error" and are
    reported on stderr, as are HU warnings (errors with ``params.strict``); a
    ``PermissionError`` naming ``out_dir`` is raised if it is not writable. The cases and the
    per-case worker come from ``case_jobs`` (the source named by ``params.source``).
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
        problems = row.get("problems") or []
        if problems != [row["error"]]:  # one problem that is the error itself: said once
            for line in problems:
                bar.write(f"ingest: {row['case_id']}:   {line}", file=sys.stderr)
    elif row["warning"]:
        bar.write(f"ingest: {row['case_id']}: warning: {row['warning']}", file=sys.stderr)
