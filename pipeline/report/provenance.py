"""Provenance of a report: which code (git), which settings (params.yaml), which data (dvc.lock).

Every part is best-effort: a report built outside a git checkout, or from outputs that no
``dvc repro`` recorded, says so in its provenance instead of failing. The data checksums are
the md5 sums DVC recorded for each stage output in ``dvc.lock`` (a folder's is the ``.dir``
hash of its listing), i.e. what ``dvc status`` would compare the files on disk against.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import yaml

# Changed paths listed in the report; the count says how many there were in all.
MAX_CHANGES = 30
# What `dvc repro` itself rewrites while it runs (dvc.lock as each stage ends, the git-tracked
# headline metrics under data/): listed among the changes, but they do not make the code or
# settings the report describes "dirty" (else every report built by a rerun would say so).
RUN_RECORDS = ("dvc.lock", "data/")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120
    )


def git_state(repo: Path) -> dict[str, Any]:
    """Return ``{commit, dirty, changes, n_changes, note}`` of the git checkout at ``repo``.

    ``commit`` is the full HEAD hash (``None`` without one); ``dirty`` is whether
    ``git status --porcelain`` lists anything (untracked files included: a new source file
    changes what ran) besides the run's own records (``RUN_RECORDS``: inside ``dvc repro``
    DVC rewrites ``dvc.lock`` as each stage ends, and the stages their headline metrics);
    ``changes`` are its first ``MAX_CHANGES`` lines, records included.
    """
    state: dict[str, Any] = {"commit": None, "dirty": None, "changes": [], "n_changes": 0}
    try:
        status = _git(repo, "status", "--porcelain")
        head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {**state, "note": f"git not available ({exc})"}
    if status.returncode != 0:
        return {**state, "note": f"{repo}: not a git checkout ({status.stderr.strip()})"}
    changes = status.stdout.splitlines()
    commit = (head.stdout.strip() or None) if head.returncode == 0 else None
    return {
        "commit": commit,
        "dirty": any(not _run_record(line) for line in changes),
        "changes": changes[:MAX_CHANGES],
        "n_changes": len(changes),
        "note": "" if commit else "no commit yet",
    }


def _run_record(porcelain_line: str) -> bool:
    """Whether a ``git status --porcelain`` line (``XY path`` or ``XY old -> new``) names
    one of ``RUN_RECORDS``."""
    path = porcelain_line[3:].rpartition(" -> ")[2].strip('"')
    return any(path == r or (r.endswith("/") and path.startswith(r)) for r in RUN_RECORDS)


def file_sha256(path: Path) -> str | None:
    """Return the SHA-256 hex digest of the bytes of ``path``, or ``None`` if it is missing."""
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_outputs(lock: Path, exclude: Path | None = None) -> dict[str, Any]:
    """Return ``{source, rows, note}``: one row ``{stage, path, md5, size, nfiles, present}``
    per output recorded in the DVC lock file ``lock``.

    ``exclude`` drops the output being written (the report's own previous entry). A missing or
    unreadable lock gives no rows and a ``note`` saying why; ``present`` is whether the path
    exists now (the md5 is DVC's record, not recomputed here).
    """
    result: dict[str, Any] = {"source": str(lock), "rows": [], "note": ""}
    if not lock.is_file():
        result["note"] = f"{lock}: not found (these outputs were not recorded by dvc repro)"
        return result
    try:
        data = yaml.safe_load(lock.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        result["note"] = f"{lock}: unreadable ({exc})"
        return result
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        result["note"] = f"{lock}: no 'stages' mapping"
        return result
    skip = exclude.resolve() if exclude is not None else None
    for stage, body in stages.items():
        outs = body.get("outs") if isinstance(body, dict) else None
        for out in outs if isinstance(outs, list) else []:
            if not isinstance(out, dict) or "path" not in out:
                continue
            where = lock.parent / str(out["path"])
            if skip is not None and where.resolve() == skip:
                continue
            result["rows"].append(
                {
                    "stage": stage,
                    "path": str(out["path"]),
                    "md5": out.get("md5") or "",
                    "size": out.get("size"),
                    "nfiles": out.get("nfiles"),
                    "present": where.exists(),
                }
            )
    return result


def provenance(
    params: Path, lock: Path, repo: Path, exclude: Path | None, shape: dict[str, Any]
) -> dict[str, Any]:
    """Return the report's provenance: git state, params file hash and run shape, lock rows.

    ``shape`` is what the params say the run covers (profile, datasets, model lists); it is
    shown beside the SHA-256 of the params file's bytes.
    """
    return {
        "git": git_state(repo),
        "params": {"source": str(params), "sha256": file_sha256(params), **shape},
        "lock": lock_outputs(lock, exclude),
    }
