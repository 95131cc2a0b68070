"""Atomic writes: nothing already written is lost or left half-written.

Every output goes to a temporary sibling first and is renamed into place only when complete.
``os.replace`` is atomic on POSIX within one file system, which is why the temporary lives in
the destination's own folder rather than in ``/tmp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it writable; return it as a ``Path``.

    Raises ``PermissionError`` naming the folder. A real probe file, not ``os.access``: root
    passes ``os.access`` on read-only mounts, and a full disk only shows when writing.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"{folder}: cannot create output folder ({exc.strerror})") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"{folder}: output folder is not writable ({exc.strerror})") from exc
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``dest``; rename it onto ``dest`` on success.

    On any exception the temporary file is removed and ``dest`` keeps its old content.
    """
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; outputs get the modes an ordinary open() would give them.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dest``; swap it in for ``dest`` on success.

    An existing ``dest`` is replaced only after the new content is complete, so an interrupted
    stage never leaves a half-written case folder behind. Replacing takes two renames (old
    content aside, new content in); a crash between them leaves the complete old content at
    ``.<name>.old`` beside ``dest``, which the next call removes.
    """
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npz(dest: str | os.PathLike, **arrays: Any) -> None:
    """Write ``arrays`` to ``dest`` with ``np.savez_compressed``, atomically.

    Written through a file object: given a path, numpy would append ".npz" to the temporary
    name. Compressed output is byte-identical for identical arrays, so DVC hashes stay stable.
    """
    import numpy as np

    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
