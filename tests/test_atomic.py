"""Atomic writes: complete or untouched, never half-written."""

from __future__ import annotations

import os

import pytest

from common.atomic import atomic_dir, atomic_path, write_json


def test_atomic_path_keeps_old_content_on_error(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert dest.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    dest = tmp_path / "case"
    dest.mkdir()
    (dest / "stale.txt").write_text("x")
    with atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(os.listdir(dest)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["case"]


def test_atomic_dir_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "case") as tmp:
            (tmp / "part.txt").write_text("y")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_modes_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_unwritable_parent_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="file"):
        write_json(blocker / "sub" / "x.json", {})
