"""A scratch copy of the repository's DAG for tests that run ``dvc`` end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def scratch_repo(tmp_path: Path, params: dict) -> Path:
    """Copy the code (common/, pipeline/, models/), dvc.yaml and .gitignore (git carries the
    headline metrics files, DVC the rest) into ``tmp_path/repo`` with ``params``; return it.

    Fails (never skips) when ``gvae`` or ``dvc`` is not installed: the DAG calls both.
    """
    if shutil.which("gvae") is None or shutil.which("dvc") is None:
        pytest.fail("the package must be installed (pip install -e .) so `gvae` and `dvc` exist")
    work = tmp_path / "repo"
    work.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("common", "pipeline", "models"):
        shutil.copytree(REPO / name, work / name, ignore=ignore)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work
