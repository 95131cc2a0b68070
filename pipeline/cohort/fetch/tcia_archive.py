"""Verify and unpack what ``gvae fetch-tcia`` downloads: series archives, labels, its state file.

A series archive from NBIA's ``getImageWithMD5Hash`` holds the DICOM files and
``md5hashes.csv`` with one ``Filename,MD5Hash`` row per file. Every listed file is checked while
it is written into a temporary folder that is renamed into place only when all of them match
(``common.atomic.atomic_dir``), so a series folder exists complete and verified or not at
all. Member names are reduced to their base name and checked, so no archive writes outside its
folder.

The state file records the series (and labels) that were verified, so a second run downloads
nothing it already has; it is rewritten atomically after each series.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from common.atomic import atomic_dir, write_json
from pipeline.cohort.fetch.tcia_api import FetchError

MD5_MANIFEST = "md5hashes.csv"
LABEL_NAME = re.compile(r"^label\d+\.nii(\.gz)?$")
_CHUNK = 1 << 20
_HEX = {"md5": 32, "sha256": 64}


def read_md5_manifest(text: str, where: str) -> dict[str, str]:
    """Return ``{file name: md5 hex}`` from the text of ``md5hashes.csv``.

    Raises ``FetchError`` naming ``where`` when the Filename/MD5Hash columns are missing, a
    name is listed twice or a hash is not 32 hex digits.
    """
    rows = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not {"Filename", "MD5Hash"} <= set(rows.fieldnames or ()):
        raise FetchError(
            f"{where}: {MD5_MANIFEST} has columns {rows.fieldnames}, expected Filename,MD5Hash"
        )
    out: dict[str, str] = {}
    for row in rows:
        name, md5 = (row["Filename"] or "").strip(), (row["MD5Hash"] or "").strip().lower()
        if name in out:
            raise FetchError(f"{where}: {MD5_MANIFEST} lists {name} twice")
        if not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise FetchError(f"{where}: {MD5_MANIFEST}: {name}: {md5!r} is not an md5 hash")
        out[name] = md5
    return out


def member_name(name: str, where: str) -> str:
    """Return the base name a zip member is written under; raise ``FetchError`` for names
    that could leave the folder or hide the file (absolute, ``..``, empty, leading dot)."""
    path = PurePosixPath(name.replace("\\", "/"))
    base = path.name
    if path.is_absolute() or ".." in path.parts or not base or base.startswith("."):
        raise FetchError(f"{where}: archive member {name!r} has an unsafe file name")
    return base


def _copy_hashing(src: io.BufferedIOBase, dest: Path, algo: str) -> str:
    digest = hashlib.new(algo)
    with open(dest, "wb") as fh:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def _open_zip(archive: Path, where: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{where}: {archive.name} is not a readable zip archive ({exc})") from exc


def extract_series(archive: Path, dest: Path, image_count: int | None, where: str) -> list[str]:
    """Verify every file of a ``getImageWithMD5Hash`` archive and write them to ``dest``.

    Returns the sorted file names written. ``dest`` is replaced atomically and only when every
    file listed in ``md5hashes.csv`` is present and matches its hash, no DICOM file is left
    unlisted, and (when ``image_count`` is given) the count equals getSeries' ImageCount.
    Raises ``FetchError`` naming ``where`` (the series) and the offending file otherwise; other
    unlisted members (e.g. a licence text) are not extracted.
    """
    with _open_zip(archive, where) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        by_name = {m.filename: m for m in members}
        if MD5_MANIFEST not in by_name:
            raise FetchError(f"{where}: archive has no {MD5_MANIFEST}")
        hashes = read_md5_manifest(zf.read(MD5_MANIFEST).decode("utf-8"), where)
        missing = sorted(set(hashes) - set(by_name))
        if missing:
            raise FetchError(f"{where}: {MD5_MANIFEST} lists files not in the archive: {missing}")
        unlisted = sorted(n for n in by_name if n not in hashes and n.lower().endswith(".dcm"))
        if unlisted:
            raise FetchError(f"{where}: DICOM files without an md5 in {MD5_MANIFEST}: {unlisted}")
        if image_count is not None and len(hashes) != image_count:
            raise FetchError(
                f"{where}: archive has {len(hashes)} files, getSeries says ImageCount {image_count}"
            )
        names = {member_name(n, where): n for n in hashes}
        if len(names) != len(hashes):
            raise FetchError(f"{where}: two archive members have the same file name")
        _clear_stale_temps(dest)
        with atomic_dir(dest) as tmp:
            for base, name in sorted(names.items()):
                try:
                    with zf.open(by_name[name]) as src:
                        got = _copy_hashing(src, tmp / base, "md5")
                except zipfile.BadZipFile as exc:  # a CRC error: damaged in transit
                    raise FetchError(f"{where}: {name}: {exc}") from exc
                if got != hashes[name]:
                    raise FetchError(
                        f"{where}: {name}: md5 {got} does not match {MD5_MANIFEST} ({hashes[name]})"
                    )
    return sorted(names)


def _clear_stale_temps(dest: Path) -> None:
    # A run killed mid-extraction leaves atomic_dir's hidden temporary folder behind.
    if dest.parent.is_dir():
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def file_checksum(path: Path, algo: str) -> str:
    """Return the hex digest of ``path`` with hashlib algorithm ``algo``."""
    digest = hashlib.new(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_checksum(path: Path, checksum: str | None, where: str) -> None:
    """Raise ``FetchError`` naming ``where`` unless ``path`` has ``checksum`` ("md5:<hex>" or
    "sha256:<hex>"); ``None`` checks nothing."""
    if checksum is None:
        return
    algo, _, expected = checksum.partition(":")
    if algo not in _HEX or len(expected) != _HEX[algo]:
        raise FetchError(f"{where}: checksum {checksum!r} is not md5:<hex> or sha256:<hex>")
    got = file_checksum(path, algo)
    if got != expected.lower():
        raise FetchError(f"{where}: {path.name}: {algo} {got} does not match {expected}")


def extract_labels(archive: Path, dest: Path, where: str) -> list[str]:
    """Write the ``labelNNNN.nii[.gz]`` files of the labels archive flat into ``dest``.

    Returns the sorted names. ``dest`` is replaced atomically. Members in folders (the archive
    has one top folder) are taken by base name; macOS ``__MACOSX/`` and ``._`` copies are
    ignored. Raises ``FetchError`` naming ``where`` when no label is found or two share a name.
    """
    with _open_zip(archive, where) as zf:
        chosen: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            path = PurePosixPath(info.filename.replace("\\", "/"))
            if info.is_dir() or "__MACOSX" in path.parts or not LABEL_NAME.match(path.name):
                continue
            base = member_name(info.filename, where)
            if base in chosen:
                raise FetchError(f"{where}: two members are named {base}")
            chosen[base] = info
        if not chosen:
            raise FetchError(f"{where}: no labelNNNN.nii.gz file in {archive.name}")
        _clear_stale_temps(dest)
        with atomic_dir(dest) as tmp:
            for base, info in sorted(chosen.items()):
                try:
                    with zf.open(info) as src:
                        _copy_hashing(src, tmp / base, "md5")
                except zipfile.BadZipFile as exc:
                    raise FetchError(f"{where}: {info.filename}: {exc}") from exc
    return sorted(chosen)


class FetchState:
    """What earlier runs verified: ``{"series": {uid: record}, "labels": record}`` in JSON."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @classmethod
    def load(cls, path: Path) -> FetchState:
        """Return the state in ``path`` (empty when it does not exist yet).

        Raises ``FetchError`` naming the file when it is not the JSON this class writes.
        """
        if not path.exists():
            return cls(path, {"series": {}, "labels": None})
        try:
            data = json.loads(path.read_text())
            if not isinstance(data.get("series"), dict):
                raise ValueError("no 'series' mapping")
        except (OSError, ValueError, AttributeError) as exc:
            raise FetchError(
                f"{path}: unreadable fetch state ({exc}); delete it to re-verify"
            ) from exc
        return cls(path, data)

    @staticmethod
    def _has_files(folder: Path, names: list[str]) -> bool:
        return folder.is_dir() and all((folder / n).is_file() for n in names)

    def series_done(self, uid: str, folder: Path) -> bool:
        """Return whether series ``uid`` was verified and all its files are still in ``folder``."""
        record = self.data["series"].get(uid)
        return record is not None and self._has_files(folder, record["files"])

    def labels_done(self, url: str, folder: Path) -> bool:
        """Return whether the labels of ``url`` were verified and are all still in ``folder``."""
        record = self.data.get("labels")
        return bool(record) and record["url"] == url and self._has_files(folder, record["files"])

    def mark_series(self, uid: str, record: dict[str, Any]) -> None:
        """Record series ``uid`` as verified and rewrite the state file atomically."""
        self.data["series"][uid] = record
        write_json(self.path, self.data)

    def mark_labels(self, url: str, files: list[str]) -> None:
        """Record the labels of ``url`` as verified and rewrite the state file atomically."""
        self.data["labels"] = {"url": url, "files": files}
        write_json(self.path, self.data)
