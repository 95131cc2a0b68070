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
import subprocess
import sys
from pathlib import Path

import pytest
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


# A DAG in miniature (a foreach stage, params, a metrics file) that `dvc repro` runs in seconds.
MINI = {
    "stages": {
        "make": {
            "foreach": ["a", "b"],
            "do": {
                "cmd": "echo ${item} ${n} > ${item}.txt",
                "params": ["n"],
                "outs": ["${item}.txt"],
            },
        },
        "report": {
            "cmd": "cat a.txt b.txt > report.txt && echo '{\"n\": 1}' > headline.json",
            "deps": ["a.txt", "b.txt"],
            "outs": ["report.txt"],
            "metrics": [{"headline.json": {"cache": False}}],
        },
    }
}


@pytest.fixture
def mini(tmp_path) -> Path:
    """A git + DVC repo of ``MINI`` after ``dvc repro``: its lock is current."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(MINI, sort_keys=False))
    (tmp_path / "params.yaml").write_text("n: 3\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    for args in (["init", "-q"], ["repro", "-q"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, check=True, env=env)
    assert lock_problems(tmp_path) == []
    return tmp_path


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_dead_stage_in_the_lock_is_named(mini):
    stale = {"cmd": "gvae old --out data/old", "outs": [{"path": "data/old"}]}
    _edit(mini / "dvc.lock", lambda lock: lock["stages"].update({"old_stage": stale}))
    assert lock_problems(mini) == ["old_stage: in dvc.lock but not in dvc.yaml"]


def test_a_new_item_a_changed_command_or_output_is_named(mini):
    def change(dvc):
        dvc["stages"]["make"]["foreach"].append("c")  # make@c never ran
        dvc["stages"]["report"]["cmd"] += " --extra"
        dvc["stages"]["report"]["outs"] = ["summary.txt"]

    _edit(mini / "dvc.yaml", change)
    problems = lock_problems(mini)
    assert problems[0] == "make@c: in dvc.yaml but not in dvc.lock", problems
    assert [p.split(" is ")[0] for p in problems[1:]] == ["report: cmd", "report: outs"], problems
