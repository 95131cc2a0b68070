"""An inter-process lock that lets one ``dvc repro`` of the flows run in a repo at a time.

DVC holds its repo lock only while it reads and records the pipeline, not while a stage's
command runs, so two ``dvc repro`` of different stages in one repo run their commands side by
side (and two of one stage fail on each other's output locks). The DAG flow takes this lock
around every ``dvc repro``: a second run of the flow (a manual trigger during the nightly)
waits for the first one's stage to finish. It is an advisory ``flock`` on a file in DVC's own
git-ignored ``.dvc/tmp``; the operating system releases it when its holder dies.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "gvae-flow-repro.lock"
# How often a waiting run tries the lock again (flock has no timeout of its own).
POLL_S = 0.2


class LockTimeout(TimeoutError):
    """The flows' lock of a repo stayed held by another run for the whole timeout."""


@contextmanager
def repo_lock(root: str | Path, timeout_s: float) -> Iterator[float]:
    """Hold the flows' lock of the DVC repo ``root``; yield the seconds spent waiting for it.

    Raises ``LockTimeout`` when another holder keeps it for more than ``timeout_s`` seconds.
    """
    path = Path(root) / ".dvc" / "tmp" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start >= timeout_s:
                    raise LockTimeout(f"{path}: still held after {timeout_s:g} s") from None
                time.sleep(POLL_S)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
