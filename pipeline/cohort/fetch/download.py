"""``gvae fetch-tcia``: download a TCIA collection (and the Pancreas-CT labels) for ``gvae ingest``.

Writes, under ``--out DIR``::

    DIR/<collection>/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<file>.dcm
    DIR/<labels_folder>/labelNNNN.nii.gz          (PANCREAS_0001 pairs with label0001.nii.gz)
    DIR/.tcia-fetch/<collection>/state.json       what was verified (skipped next time)
    DIR/.tcia-fetch/<collection>/<uid>.zip.part   a download that broke off (resumed next time)

so ``gvae ingest --images DIR/<collection> --labels DIR/<labels_folder>`` reads it (each
PatientID folder is one case). Series come from TCIA's NBIA REST API
(``pipeline/cohort/fetch/tcia_api.py``) and are verified file by file against the archive's
``md5hashes.csv`` before their folder appears (``pipeline/cohort/fetch/tcia_archive.py``). A series
that fails (after the retries, or on a checksum mismatch) is reported by name and the others
are still fetched; the exit code is then 1.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlencode, urlparse

import requests
from tqdm import tqdm

from common.atomic import ensure_writable_dir
from pipeline.cohort.fetch.tcia_api import (
    FetchError,
    SeriesInfo,
    download,
    list_series,
    make_session,
    select_patients,
)
from pipeline.cohort.fetch.tcia_archive import (
    FetchState,
    check_checksum,
    extract_labels,
    extract_series,
)
from pipeline.errors import StageError
from pipeline.params.fetch import FetchParams

WORK_DIR = ".tcia-fetch"
STATE_FILE = "state.json"


def _download(session: requests.Session, params: FetchParams, url: str, dest: Path, **kw) -> None:
    download(
        session,
        url,
        dest,
        timeout=params.timeout_s,
        retries=params.retries,
        backoff_s=params.backoff_s,
        **kw,
    )


def fetch_series(
    session: requests.Session,
    params: FetchParams,
    series: SeriesInfo,
    images: Path,
    work: Path,
    progress: bool,
) -> list[str]:
    """Download, verify and unpack one series into ``series.folder(images)``; return its files.

    A verified archive is deleted; a damaged one too, so the next run downloads it afresh.
    Raises ``FetchError`` naming the patient, the series and the problem.
    """
    where = f"{series.patient_id} series {series.series_uid}"
    archive = work / f"{series.series_uid}.zip"
    query = urlencode({"SeriesInstanceUID": series.series_uid})
    url = f"{params.base_url}getImageWithMD5Hash?{query}"
    if not archive.exists():  # an existing one is complete: it is renamed in only when whole
        try:
            _download(session, params, url, archive, progress=progress, desc=series.patient_id)
        except FetchError as exc:
            raise FetchError(f"{where}: {exc}") from exc
    folder = series.folder(images)
    try:
        return extract_series(archive, folder, series.image_count, where)
    except FetchError:
        # An empty PatientID folder would be a case without images to `gvae ingest`.
        for empty in (folder.parent, folder.parent.parent):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
        raise
    finally:
        archive.unlink(missing_ok=True)


def fetch_labels(
    session: requests.Session,
    params: FetchParams,
    url: str,
    labels_dir: Path,
    work: Path,
    progress: bool,
) -> list[str]:
    """Download the labels archive, check ``params.labels_checksum`` and unpack its label
    files into ``labels_dir``; return their names. Raises ``FetchError`` naming the URL."""
    where = f"labels {url}"
    archive = work / (PurePosixPath(urlparse(url).path).name or "labels.zip")
    if not archive.exists():
        try:
            _download(session, params, url, archive, progress=progress, desc="labels")
        except FetchError as exc:
            raise FetchError(f"{where}: {exc}") from exc
    try:
        check_checksum(archive, params.labels_checksum, where)
        return extract_labels(archive, labels_dir, where)
    finally:
        archive.unlink(missing_ok=True)


def run(
    params: FetchParams,
    out: str | Path,
    patients: list[str] | None = None,
    labels: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch the series of ``params.collection`` (of ``patients`` only, if given) and the labels.

    Returns ``{"downloaded": [uid], "skipped": [uid], "failed": [message], "labels": status}``
    with status "downloaded", "skipped" (already verified), "off" or "failed". Series and
    labels that fail are listed and do not stop the others; a listing that fails, an unknown
    patient or an unwritable ``out`` raise ``StageError`` / ``PermissionError``.
    """
    out = ensure_writable_dir(out)
    work = out / WORK_DIR / params.collection
    session = make_session(params.retries, params.backoff_s)
    try:
        state = FetchState.load(work / STATE_FILE)
        listed = list_series(session, params.base_url, params.collection, params.timeout_s)
    except FetchError as exc:
        raise StageError(str(exc)) from exc
    if not listed:
        raise StageError(f"{params.base_url}getSeries lists no series of {params.collection}")
    try:
        chosen = select_patients(listed, list(patients or []), params.collection)
    except ValueError as exc:
        raise StageError(str(exc)) from exc
    images = out / params.collection
    report: dict[str, Any] = {"downloaded": [], "skipped": [], "failed": [], "labels": "off"}
    bar = tqdm(chosen, desc="fetch-tcia", unit="series", disable=not progress, file=sys.stderr)
    for series in bar:
        if state.series_done(series.series_uid, series.folder(images)):
            report["skipped"].append(series.series_uid)
            continue
        try:
            files = fetch_series(session, params, series, images, work, progress)
        except FetchError as exc:
            report["failed"].append(str(exc))
            bar.write(f"fetch-tcia: error: {exc}", file=sys.stderr)
            continue
        state.mark_series(
            series.series_uid,
            {"patient_id": series.patient_id, "study_uid": series.study_uid, "files": files},
        )
        report["downloaded"].append(series.series_uid)
    if labels and params.labels_url:
        report["labels"] = _labels(session, params, out, work, state, progress, report)
    return report


def _labels(
    session: requests.Session,
    params: FetchParams,
    out: Path,
    work: Path,
    state: FetchState,
    progress: bool,
    report: dict[str, Any],
) -> str:
    """Fetch the labels unless verified before; return their status for ``run``'s report."""
    labels_dir = out / params.labels_folder
    if state.labels_done(params.labels_url, labels_dir):
        return "skipped"
    try:
        files = fetch_labels(session, params, params.labels_url, labels_dir, work, progress)
    except FetchError as exc:
        report["failed"].append(str(exc))
        print(f"fetch-tcia: error: {exc}", file=sys.stderr)
        return "failed"
    state.mark_labels(params.labels_url, files)
    return "downloaded"
