"""TCIA's public NBIA REST API (v1): the series of a collection and resumable archive downloads.

Two calls of https://services.cancerimagingarchive.net/nbia-api/services/v1/ are used:

- ``getSeries?Collection=<name>&format=json``: one JSON object per series with ``PatientID``,
  ``StudyInstanceUID``, ``SeriesInstanceUID``, ``Modality``, ``ImageCount``, ``FileSize``, ...
  (an empty body when nothing matches);
- ``getImageWithMD5Hash?SeriesInstanceUID=<uid>``: a zip of the series' DICOM files plus
  ``md5hashes.csv`` (``Filename,MD5Hash``), verified by ``pipeline/cohort/fetch/tcia_archive.py``.

Transient failures are retried at two levels. urllib3's ``Retry`` repeats a request that got no
response or HTTP 429/5xx, with exponential backoff (and the server's Retry-After). A body that
breaks off half-way is kept as ``<dest>.part`` and continued with an HTTP Range request, by the
next attempt of this run or by the next run; a server that ignores Range (answers 200 instead of
206) sends the whole file again, which then replaces the part.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

RETRY_STATUS = (429, 500, 502, 503, 504)
MAX_BACKOFF_S = 60.0
_CHUNK = 1 << 20
# PatientID and the UIDs become folder names: one path component, nothing a shell or a file
# system would read differently (TCIA's are "PANCREAS_0001" and dotted digits).
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class FetchError(RuntimeError):
    """One series or archive could not be fetched; the message names it and the reason."""


class _Interrupted(Exception):
    """The response body broke off; what arrived is in the ``.part`` file."""


@dataclass(frozen=True)
class SeriesInfo:
    """One row of ``getSeries``: where the series goes and how many images it should have."""

    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    image_count: int | None
    file_size: int | None

    def folder(self, images: Path) -> Path:
        """Return ``images/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>``."""
        return images / self.patient_id / self.study_uid / self.series_uid


def _optional_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_series(rows: Any, where: str) -> list[SeriesInfo]:
    """Return the ``getSeries`` JSON rows as ``SeriesInfo``, sorted by patient and series UID.

    Raises ``ValueError`` naming ``where`` (the request) and the row for a response that is not
    a list of objects, a row without PatientID, StudyInstanceUID or SeriesInstanceUID, an ID
    that is not one plain folder name, or a SeriesInstanceUID listed twice.
    """
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected a JSON list of series, got {type(rows).__name__}")
    out: dict[str, SeriesInfo] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: row {i} is not a JSON object")
        keys = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
        ids = [row.get(k) for k in keys]
        for key, value in zip(keys, ids, strict=True):
            if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
                raise ValueError(f"{where}: row {i}: {key} {value!r} is not a usable folder name")
        if ids[2] in out:
            raise ValueError(f"{where}: SeriesInstanceUID {ids[2]} is listed twice")
        out[ids[2]] = SeriesInfo(
            patient_id=ids[0],
            study_uid=ids[1],
            series_uid=ids[2],
            modality=str(row.get("Modality", "")),
            image_count=_optional_int(row.get("ImageCount")),
            file_size=_optional_int(row.get("FileSize")),
        )
    return sorted(out.values(), key=lambda s: (s.patient_id, s.series_uid))


def select_patients(series: list[SeriesInfo], patients: list[str], collection: str) -> list:
    """Return the series of ``patients`` (all series when the list is empty).

    Raises ``ValueError`` naming every requested PatientID the collection does not list.
    """
    if not patients:
        return list(series)
    listed = {s.patient_id for s in series}
    missing = sorted(set(patients) - listed)
    if missing:
        raise ValueError(
            f"collection {collection} has no series of patient(s) {', '.join(missing)} "
            f"({len(listed)} patients listed)"
        )
    wanted = set(patients)
    return [s for s in series if s.patient_id in wanted]


def backoff_delay(attempt: int, backoff_s: float) -> float:
    """Return the wait before retry ``attempt`` (0-based): ``backoff_s * 2**attempt``, capped."""
    return min(backoff_s * 2**attempt, MAX_BACKOFF_S)


def make_session(retries: int, backoff_s: float) -> requests.Session:
    """Return a session that retries failed connections and HTTP 429/5xx ``retries`` times."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET"}),
        backoff_factor=backoff_s / 2,  # urllib3 waits factor * 2**(n - 1) before retry n
        backoff_max=MAX_BACKOFF_S,
        raise_on_status=True,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "gvae-pipeline fetch-tcia"
    return session


def list_series(
    session: requests.Session, base_url: str, collection: str, timeout: float
) -> list[SeriesInfo]:
    """Return the series of ``collection`` from ``getSeries`` (empty when TCIA lists none).

    Raises ``FetchError`` naming the request when it fails or the answer is not valid.
    """
    url = f"{base_url}getSeries"
    where = f"{url}?Collection={collection}"
    try:
        resp = session.get(
            url, params={"Collection": collection, "format": "json"}, timeout=timeout
        )
        resp.raise_for_status()
        rows = resp.json() if resp.content.strip() else []
        return parse_series(rows, where)
    except (requests.RequestException, ValueError) as exc:
        raise FetchError(f"{where}: {exc}") from exc


def _resume_offset(resp: requests.Response, have: int) -> int:
    """Return where the body of ``resp`` starts in the file: ``have`` for a 206 that continues
    the part, 0 for a full answer (a server that ignores Range sends 200 and everything)."""
    if resp.status_code != 206:
        return 0
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:
        raise FetchError(
            f"{resp.url}: asked for bytes {have}- but got Content-Range "
            f"{resp.headers.get('Content-Range')!r}"
        )
    return have


def _download_once(
    session: requests.Session, url: str, part: Path, timeout: float, progress: bool, desc: str
) -> None:
    """Continue (or start) ``part`` from ``url``; raise ``_Interrupted`` if the body breaks."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as exc:  # urllib3 has already retried it
        raise FetchError(f"{url}: {exc}") from exc
    with resp:
        if resp.status_code == 416 and have:
            # The part is no prefix of what the server has now: start again from byte 0.
            part.unlink()
            return _download_once(session, url, part, timeout, progress, desc)
        if resp.status_code >= 400:
            raise FetchError(f"{url}: HTTP {resp.status_code} {resp.reason}")
        start = _resume_offset(resp, have)
        length = _optional_int(resp.headers.get("Content-Length"))
        bar = tqdm(
            total=None if length is None else start + length,
            initial=start,
            unit="B",
            unit_scale=True,
            desc=desc,
            leave=False,
            disable=not progress,
            file=sys.stderr,
        )
        with bar, open(part, "ab" if start else "wb") as fh:
            try:
                for chunk in resp.iter_content(_CHUNK):
                    fh.write(chunk)  # an OSError here (a full disk) is no hiccup: not caught
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                raise _Interrupted(str(exc)) from exc
    return None


def download(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    timeout: float,
    retries: int,
    backoff_s: float,
    progress: bool = False,
    desc: str = "",
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a part left by a broken
    earlier attempt or run with an HTTP Range request; return ``dest``.

    ``dest`` appears (by rename) only when the whole body has arrived. Raises ``FetchError``
    naming the URL when the server answers an error or the body breaks off ``retries + 1``
    times; the part is then kept for the next run.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _download_once(session, url, part, timeout, progress, desc)
        except _Interrupted as exc:
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise FetchError(
                    f"{url}: download broke off {retries + 1} time(s) ({exc}); {kept} bytes "
                    f"kept in {part}, the next run resumes from there"
                ) from exc
            time.sleep(backoff_delay(attempt, backoff_s))
            continue
        os.replace(part, dest)
        return dest
    raise AssertionError("unreachable")  # pragma: no cover
