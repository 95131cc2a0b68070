"""The committed ``dvc.lock`` records the DAG of ``dvc.yaml`` as it is now.

A lock left behind by renamed or removed stages gives ``dvc exp show`` no baseline for ``HEAD``
and fills the report's provenance table with stages that no longer exist. The lock must hold
exactly the stages of ``dvc.yaml`` (foreach/matrix expanded by DVC from ``params.yaml``), each
with the command, outputs, file dependencies and params keys that ``dvc.yaml`` gives it now.
The recorded hashes and params values are what the last ``dvc repro`` saw; they are DVC's to
compare (``dvc status``), not this test's.

After changing ``dvc.yaml``: ``dvc repro`` (or ``dvc commit`` once the outputs are rebuilt) and
commit ``dvc.lock`` with the change.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from .conftest import REPO


def lock_problems(root: Path) -> list[str]:
    """One line per way ``root/dvc.lock`` differs from the stages of ``root/dvc.yaml``:
    a stage missing from either, or a stage whose recorded cmd, outs, file deps or params
    keys are not the ones ``dvc.yaml`` renders now. Empty when the lock is current."""
    from dvc.repo import Repo

    with Repo(str(root), uninitialized=True) as repo:
        top = os.path.join(repo.root_dir, "dvc.yaml")
        stages = {s.name: _expected(s) for s in repo.index.stages if s.path == top and s.cmd}
    lock = yaml.safe_load((root / "dvc.lock").read_text()).get("stages") or {}
    problems = [
        f"{name}: in dvc.lock but not in dvc.yaml" for name in sorted(set(lock) - set(stages))
    ]
    problems += [
        f"{name}: in dvc.yaml but not in dvc.lock" for name in sorted(set(stages) - set(lock))
    ]
    for name in sorted(set(lock) & set(stages)):
        recorded = _recorded(lock[name])
        for field, want in stages[name].items():
            if recorded[field] != want:
                problems.append(
                    f"{name}: {field} is {recorded[field]!r} in dvc.lock, {want!r} in dvc.yaml"
                )
    return problems


def _expected(stage) -> dict:
    """What the lock entry of DVC stage ``stage`` must record."""
    from dvc.dependency.param import ParamsDependency

    files = [d for d in stage.deps if not isinstance(d, ParamsDependency)]
    params = {key for dep in stage.params for key in dep.params}
    return {
        "cmd": stage.cmd,
        "outs": sorted(str(o.def_path) for o in stage.outs),
        "deps": sorted(str(d.def_path) for d in files),
        "params": sorted(params),
    }


def _recorded(entry: dict) -> dict:
    """The same fields as :func:`_expected`, from one stage of ``dvc.lock``."""
    params = {key for keys in (entry.get("params") or {}).values() for key in keys}
    return {
        "cmd": entry.get("cmd"),
        "outs": sorted(o["path"] for o in entry.get("outs") or []),
        "deps": sorted(d["path"] for d in entry.get("deps") or []),
        "params": sorted(params),
    }


def test_committed_lock_matches_dvc_yaml():
    problems = lock_problems(REPO)
    assert not problems, "dvc.lock is stale (run `dvc repro` and commit it):\n" + "\n".join(
        problems
    )


def _copy(tmp_path: Path) -> Path:
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_a_dead_stage_in_the_lock_is_named(tmp_path):
    root = _copy(tmp_path)
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    lock["stages"]["old_stage"] = {"cmd": "gvae old --out data/old", "outs": []}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    assert lock_problems(root) == ["old_stage: in dvc.lock but not in dvc.yaml"]


def test_a_changed_command_or_a_new_stage_is_named(tmp_path):
    root = _copy(tmp_path)
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"]["report"]["cmd"] += " --extra"
    dvc["stages"]["new_stage"] = {"cmd": "echo new > new.txt", "outs": ["new.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    problems = lock_problems(root)
    assert problems[0] == "new_stage: in dvc.yaml but not in dvc.lock", problems
    assert len(problems) == 2 and problems[1].startswith("report: cmd is "), problems
