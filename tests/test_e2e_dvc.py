"""One tiny end-to-end run of the whole DAG through ``dvc repro``, in a scratch repository.

Checks the DVC contract too: a second ``dvc repro`` runs nothing, and changing only the window
reruns only ``slices``. The same run then serves the README's two workflows: a second experiment
compared with the committed run (``dvc exp show``, ``dvc metrics diff``, ``dvc plots diff``:
the CT and segmentation metrics present for both), and a push to a local DVC remote pulled into
a fresh clone, which is up to date and has the same report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dvc_scratch import scratch_repo
from tests.test_dvc_lock import lock_problems

REPO = Path(__file__).resolve().parents[1]

# Tiny numbers for every section; everything else keeps the repository's params.yaml values.
TINY = {
    "phantom": {"cases": 5, "slices": 12, "matrix": 64, "slice_thickness_mm": 5.0},
    "ingest": {"workers": 1},
    "slices": {"size": 32, "shard_size": 16},
    "classifier": {"steps": 30},
    "train": {"steps": 4, "checkpoint_every": 2, "sample_every": 2, "batch_size": 8},
    "mnist": {"seeds": [0, 1]},  # two training seeds: the tables' mean ± sd
    "evaluate": {"n_samples": 64, "iw_samples": 4, "iw_images": 16, "ms_ssim_pairs": 16},
    "ct": {"train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "sample_every": 2}},
    "generate": {"n": 16},
    "ct_features": {"steps": 5, "batch_size": 8},
    "ct_quality": {"n_samples": 64, "ms_ssim_pairs": 8},
    "segment": {"steps": 3, "batch_size": 4, "n_boot": 200},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    # A safety stop for a hung DAG, not a timed assertion: the whole tiny DAG takes ~13 min on
    # 2 cores when the rest of the suite runs beside it.
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


GIT_USER = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
REPORT = "data/report/index.html"


def _headlines(params: dict) -> list[str]:
    """The git-tracked headline metrics files of a run of ``params`` (dvc.yaml ``metrics:``)."""
    ct = [*params["ct"]["models"], "real"]
    mnist = [
        f"data/eval/{d}/{m}/s{s}/headline.json"
        for d in params["mnist"]["datasets"]
        for m in params["mnist"]["models"]
        for s in params["mnist"]["seeds"]
    ]
    mnist += [f"data/eval/{d}/real/headline.json" for d in params["mnist"]["datasets"]]
    return [
        *mnist,
        *(f"data/ct/quality/{m}/headline.json" for m in ct),
        "data/ct/segment/headline.json",
        "data/ct/usefulness/headline.json",
    ]


def _json(cmd: list[str], cwd: Path, env: dict):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "failed to load" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def _share_through_a_remote(work: Path, remote: Path, env: dict) -> None:
    """README "Sharing runs": push to a folder remote, clone, pull: up to date, same report."""
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], work, env)
    _run(["git", "commit", "-qam", "DVC remote"], work, env)
    _run(["dvc", "push"], work, env)
    clone = work.parent / "clone"
    _run(["git", "clone", "-q", str(work), str(clone)], work.parent, env)
    _run(["dvc", "pull"], clone, env)
    assert _json(["dvc", "status", "--json"], clone, env) == {}
    assert _stages_run(_run(["dvc", "repro", "--dry"], clone, env)) == set()
    assert (clone / REPORT).read_bytes() == (work / REPORT).read_bytes()


def _compare_two_experiments(work: Path, params: dict, env: dict) -> None:
    """README "Comparing two experiments": the committed run against one more segmentation
    seed; every headline metric (CT quality and segmentation included) loads for both."""
    ran = _stages_run(
        _run(["dvc", "exp", "run", "-n", "seed1", "-S", "segment.seeds=[1]"], work, env)
    )
    assert ran == {"segment", "usefulness", "report"}, ran
    headlines = _headlines(params)
    show = _json(["dvc", "exp", "show", "--json"], work, env)
    revs = {"HEAD": show[1]["data"]}  # show[0] is the workspace
    revs.update({r["name"]: r["data"] for e in show[1]["experiments"] for r in e["revs"]})
    assert set(revs) == {"HEAD", "seed1"}, list(revs)
    for rev, data in revs.items():
        assert sorted(data["metrics"]) == sorted(headlines), (rev, list(data["metrics"]))
        for path in headlines:
            assert data["metrics"][path].get("data"), (rev, path, data["metrics"][path])
    table = _run(["dvc", "exp", "show", "--csv"], work, env)
    rows = list(csv.DictReader(io.StringIO(table)))
    metric_columns = [c for c in rows[0] if c in {"fid", "mmd_x1e4"} or " - " in c]
    assert metric_columns, list(rows[0])
    for row in rows:
        assert "!" not in row.values(), row  # DVC's mark for a metric it could not load

    diff = _json(["dvc", "metrics", "diff", "HEAD", "seed1", "--all", "--json"], work, env)
    seg = diff["data/ct/segment/headline.json"]
    assert seg and all(v["old"] is not None or v["new"] is None for v in seg.values()), seg
    assert "data/ct/quality/real/headline.json" in diff
    full = ["--targets", "data/ct/segment/metrics.json"]  # a cached output, not a default column
    assert _json(["dvc", "metrics", "diff", "HEAD", "seed1", *full, "--all", "--json"], work, env)

    plots = _json(["dvc", "plots", "diff", "HEAD", "seed1", "--json"], work, env)["data"]
    for path in ("data/ct/segment/forest.png", "segmentation_dice_vs_size"):
        found = {rev for p in plots[path] for rev in p["revisions"]}
        assert found == {"HEAD", "seed1"}, (path, plots[path])


def _stages_run(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


@pytest.mark.slow
def test_dvc_repro_whole_dag(tmp_path, real_data_dir):
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    work = scratch_repo(tmp_path, params)
    env = dict(os.environ, GVAE_DATA_MIRROR=str(real_data_dir), MPLBACKEND="Agg", **GIT_USER)
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        _run(cmd, work, env)
    shutil.copytree(REPO / ".dvc" / "plots", work / ".dvc" / "plots")  # the plots' templates

    first = _run(["dvc", "repro"], work, env)
    ran = _stages_run(first)
    datasets = params["mnist"]["datasets"]
    assert datasets == ["mnist"]  # the 2-core default; `full`/`paper` add Fashion-MNIST
    assert {"phantom", "ingest", "slices", "tables@mnist", "report"} <= ran
    assert not any("fashion_mnist" in stage for stage in ran)
    assert {f"train@mnist-{m}-{s}" for m in params["mnist"]["models"] for s in (0, 1)} <= ran
    ct_models = params["ct"]["models"]
    assert {f"train_ct@{m}" for m in ct_models} | {f"generate@{m}" for m in ct_models} <= ran
    assert {"ct_features", "ct_quality_real", "ct_quality_report", "segment"} <= ran
    quality = (work / "data/ct/quality_report/table.md").read_text()
    for model in ct_models:
        assert model in quality
    seg = (work / "data/ct/segment/table.md").read_text()
    assert "real+classical" in seg and "real+syn:gvae" in seg
    assert (work / "data/ct/segment/dice_vs_size.png").stat().st_size > 1000
    manifest = yaml.safe_load((work / "data/volumes/manifest.json").read_text())
    assert [row["status"] for row in manifest] == ["ok"] * 5
    assert (work / "data/slices/index.json").is_file()
    assert (work / "data/slices/contact_sheet.png").stat().st_size > 1000
    for dataset in datasets:
        table = (work / f"data/tables/{dataset}/table.md").read_text()
        for model in params["mnist"]["models"]:
            assert f"| {model} | 2 |" in table  # two seeds per row
        assert "mean ± sd over seeds" in table and " ± " in table
        assert (work / f"data/tables/{dataset}/samples.png").stat().st_size > 1000
        assert (work / f"data/tables/{dataset}/stability.png").stat().st_size > 1000
        stab = json.loads((work / f"data/tables/{dataset}/stability.json").read_text())
        assert set(stab["models"]["gvae"]) == {"0", "1"}
        assert len(stab["models"]["gvae"]["0"]["steps"]) == 2  # snapshots at steps 2 and 4
    html = (work / "data/report/index.html").read_text()
    assert "Fashion-MNIST" in html and "not produced by this run" in html
    assert "http://" not in html and "https://" not in html
    assert html.count('<img src="data:image/png;base64,') >= 1 + len(params["mnist"]["models"])

    second = _run(["dvc", "repro"], work, env)
    assert _stages_run(second) == set(), second
    # The lock check of the repository's own dvc.lock (test_dvc_lock.py) passes on a real one.
    assert lock_problems(work) == []
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "tiny run"], work, env)
    tracked = _run(["git", "ls-files", "data"], work, env).split()
    assert set(tracked) == set(_headlines(params)), tracked  # git: the headline metrics only

    # A quality setting reruns the quality stages and their table, nothing else.
    params["ct_quality"]["seed"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro"], work, env)
    quality = {f"ct_quality@{m}" for m in ct_models} | {"ct_quality_real", "ct_quality_report"}
    quality.add("report")  # the run report shows the quality table and grids
    quality.add("usefulness")  # it correlates each set's quality with the Dice it produced
    assert _stages_run(third) == quality, third

    # The window invalidates `slices` alone (the CT stages follow through their data, not their
    # params; the MNIST stages not at all). `dvc status` shows it without rerunning the CT grid.
    params["slices"]["window"] = {"level": 50, "width": 350}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        ["dvc", "status", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert set(status) == {"slices"}, status

    # The second sanity dataset is one params list away: its stages join the DAG, MNIST's stay.
    params["mnist"]["datasets"] = ["mnist", "fashion_mnist"]
    params["slices"]["window"] = {"level": 40, "width": 400}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        ["dvc", "status", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    stale = set(json.loads(proc.stdout))
    expected = {"mnist@fashion_mnist", "classifier@fashion_mnist", "tables@fashion_mnist"}
    compared = params["mnist"]["models"]
    expected |= {
        f"{kind}@fashion_mnist-{m}-{s}"
        for kind in ("train", "evaluate")
        for m in compared
        for s in (0, 1)
    }
    assert expected <= stale and not any("@mnist" in stage for stage in stale), stale

    # Back to the committed run (git: params, lock, headlines; DVC: every output from its cache).
    _run(["git", "reset", "-q", "--hard"], work, env)
    _run(["dvc", "checkout", "--force"], work, env)
    assert _json(["dvc", "status", "--json"], work, env) == {}
    _share_through_a_remote(work, tmp_path / "remote", env)
    committed = yaml.safe_load((work / "params.yaml").read_text())  # not the edited dict above
    _compare_two_experiments(work, committed, env)
