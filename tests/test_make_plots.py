"""``make repro`` on a fresh clone builds the offline page of ``dvc plots show`` (and installs
the OHIF viewer of ``gvae view``) before the DAG.

The clone is the repository's tracked files (what ``git clone`` gives, uncommitted edits
included), with no ``docs/plots/build``. Its ``.venv`` is a stand-in: a fresh install stamp, the
installed ``gvae``, and a ``dvc`` that only records whether the page was there when it ran, so
the test checks make's wiring in seconds without running the DAG. The npm libraries come from
the repository's ``docs/plots/node_modules`` (``npm ci`` there when missing), so no network is
needed here; the page rendering offline is tests/test_dvc_plots.py's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.export import viewer
from pipeline.report import plots_template

REPO = Path(__file__).resolve().parents[1]
FAKE_DVC = """#!/bin/sh
# Stands in for `dvc`: records each call's arguments and whether the plots page existed then.
# `dvc remote default` answers as DVC does: the name and exit 0 only when $FAKE_REMOTE is set.
if [ "$1 $2" = "remote default" ]; then
  [ -n "$FAKE_REMOTE" ] && echo "$FAKE_REMOTE" && exit 0
  echo "ERROR: no default remote set" >&2; exit 251
fi
if [ -f {page} ]; then echo "page present: $*"; else echo "page missing: $*"; fi >> dvc_ran
"""


def _fresh_clone(dest: Path) -> Path:
    """Copy the tracked files of the repository into ``dest``; return it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is not in a clone
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _stand_in_venv(clone: Path) -> None:
    """``clone/.venv`` that make takes as installed: its stamp is newer than pyproject.toml."""
    gvae = shutil.which("gvae", path=str(Path(sys.executable).parent)) or shutil.which("gvae")
    if gvae is None:
        pytest.fail("the package must be installed (pip install -e .) so `gvae` exists")
    bin_dir = clone / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "gvae").symlink_to(gvae)
    (bin_dir / "python").symlink_to(sys.executable)
    dvc = bin_dir / "dvc"
    dvc.write_text(FAKE_DVC.format(page=plots_template.DEFAULT_OUT))
    dvc.chmod(0o755)
    stamp = clone / ".venv" / ".installed"
    stamp.touch()
    newer = (clone / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (newer, newer))


def test_make_repro_builds_the_plots_page_first(tmp_path):
    if shutil.which("make") is None:
        pytest.fail("make is required (Debian: apt-get install make)")
    npm_dir = REPO / plots_template.NPM_DIR
    with plots_template._locked(npm_dir):  # beside test_dvc_plots' build under xdist
        plots_template.ensure_installed(npm_dir)
    clone = _fresh_clone(tmp_path / "clone")
    page = clone / plots_template.DEFAULT_OUT
    assert not page.exists()
    (clone / plots_template.NPM_DIR / "node_modules").symlink_to(npm_dir / "node_modules")
    # The viewer `make repro` also installs: the repository's, so no npm download here.
    ohif_dir = REPO / viewer.NPM_DIR
    viewer.install(ohif_dir)
    (clone / viewer.NPM_DIR / "node_modules").symlink_to(ohif_dir / "node_modules")
    _stand_in_venv(clone)

    env = dict(os.environ, PYTHONPATH=str(clone))  # the clone's code, not an editable install's
    proc = subprocess.run(
        ["make", "repro"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"make repro failed:\n{proc.stdout}\n{proc.stderr}"
    # No default remote: `dvc repro` after the page is built, nothing pushed, and make says so.
    assert (clone / "dvc_ran").read_text().splitlines() == ["page present: repro"]
    assert "no default DVC remote, nothing pushed" in proc.stdout
    assert "OHIF viewer is not installed" not in proc.stderr, proc.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count(plots_template.PLACEHOLDER) == 1  # what `dvc plots show` requires

    # A second `make repro` leaves the page alone (the two commands stay idempotent).
    before = page.stat().st_mtime_ns
    again = subprocess.run(["make", "-n", "repro"], cwd=clone, env=env, capture_output=True)
    assert b"plots-template" not in again.stdout, again.stdout.decode()
    assert b"--install-only" not in again.stdout, again.stdout.decode()
    assert page.stat().st_mtime_ns == before

    # With a default remote (README "Sharing runs"), the finished run is pushed after it.
    (clone / "dvc_ran").unlink()
    with_remote = dict(env, FAKE_REMOTE="shared")
    proc = subprocess.run(
        ["make", "repro"], cwd=clone, env=with_remote, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"make repro failed:\n{proc.stdout}\n{proc.stderr}"
    assert (clone / "dvc_ran").read_text().splitlines() == [
        "page present: repro",
        "page present: push",
    ]
