"""npm packages pinned by a committed ``package.json`` + ``package-lock.json``, installed with
``npm ci`` into that folder's git-ignored ``node_modules`` (the offline plots page, the OHIF
viewer).

Every package named must be pinned to one exact version in ``package.json``: a range would let
``npm install`` drift from the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path


class NpmError(RuntimeError):
    """npm or a pinned package is missing or broken; the message names the file or tool."""


def pinned_versions(npm_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """Return ``{package: version}`` of ``names`` as pinned in ``npm_dir/package.json``.

    Raises ``NpmError`` when the manifest is missing, or a package is absent or not pinned to
    one exact version.
    """
    manifest = npm_dir / "package.json"
    try:
        deps = json.loads(manifest.read_text(encoding="utf-8")).get("dependencies") or {}
    except (OSError, json.JSONDecodeError) as exc:
        raise NpmError(f"{manifest}: cannot read the npm manifest ({exc})") from exc
    versions = {}
    for name in names:
        version = deps.get(name)
        if not version or not version[0].isdigit():
            raise NpmError(
                f"{manifest}: dependency {name!r} must be pinned to an exact version, "
                f"got {version!r}"
            )
        versions[name] = version
    return versions


def installed_version(npm_dir: Path, name: str) -> str | None:
    """Return the version of ``name`` installed under ``npm_dir/node_modules``, or ``None``."""
    try:
        meta = json.loads((npm_dir / "node_modules" / name / "package.json").read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return meta.get("version")


def npm_ci(npm_dir: Path) -> None:
    """Install the locked packages into ``npm_dir/node_modules`` with ``npm ci``.

    ``--ignore-scripts``: the packages ship prebuilt files, so no install script needs to run.
    Raises ``NpmError`` when npm is missing or fails (its output in the message).
    """
    npm = shutil.which("npm")
    if npm is None:
        raise NpmError(f"npm not found: install Node.js (npm) to install the packages of {npm_dir}")
    if not (npm_dir / "package-lock.json").is_file():
        raise NpmError(f"{npm_dir / 'package-lock.json'}: missing (npm ci needs it)")
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    proc = subprocess.run(cmd, cwd=npm_dir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NpmError(
            f"`npm ci` in {npm_dir} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


@contextlib.contextmanager
def locked(npm_dir: Path, lock_name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``npm_dir/lock_name``: ``npm ci`` first deletes
    ``node_modules``, so two installs at once (parallel test workers) would each see the other's
    half-installed tree."""
    with open(npm_dir / lock_name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_installed(npm_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """Run ``npm ci`` unless the pinned versions of ``names`` are installed; return them.

    Raises ``NpmError`` when an installed version still differs from its pin afterwards.
    """
    pinned = pinned_versions(npm_dir, names)
    if any(installed_version(npm_dir, name) != v for name, v in pinned.items()):
        npm_ci(npm_dir)
    for name, version in pinned.items():
        found = installed_version(npm_dir, name)
        if found != version:
            raise NpmError(
                f"{npm_dir / 'node_modules' / name}: version {found} installed, {version} pinned "
                f"(package-lock.json out of step with package.json? run `npm install` there)"
            )
    return pinned
