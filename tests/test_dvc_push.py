"""After a run the DAG flow pushes to the default DVC remote, when there is one (``flows.push``).

The push helpers of ``pipeline.flows.dag`` on a one-stage scratch repository with a folder
remote; the whole flow with Prefect is in test_flows.py, the push/pull round trip of a real
run in test_e2e_dvc.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.flows.dag import PushFailed, default_remote, push
from pipeline.params.loader import ParamsError, load_section

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def _dvc(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, env=ENV)


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    stage = {"cmd": "echo 42 > out.txt", "outs": ["out.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": stage}}))
    _dvc(root, "repro", "-q")
    return root


def test_push_uploads_the_run_to_the_default_remote(repo, tmp_path):
    assert default_remote(repo) is None  # no remote: the flow and `make repro` push nothing
    store = tmp_path / "store"
    _dvc(repo, "remote", "add", "-d", "shared", str(store))
    assert default_remote(repo) == "shared"
    lines: list[str] = []
    push(repo, log=lines.append)
    assert any("pushed" in line for line in lines), lines
    assert [p for p in store.rglob("*") if p.is_file()], "nothing reached the remote"


def test_a_failed_push_names_the_repo(repo, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    _dvc(repo, "remote", "add", "-d", "shared", str(blocker))
    with pytest.raises(PushFailed, match=str(repo)):
        push(repo, log=lambda _line: None)


def test_push_setting_is_auto_or_never(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"flows": {"push": "never"}}))
    assert load_section(path, "flows").push == "never"
    path.write_text(yaml.safe_dump({"flows": {"push": "always"}}))
    with pytest.raises(ParamsError, match="push"):
        load_section(path, "flows")
