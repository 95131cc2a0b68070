"""One tiny end-to-end run of the whole DAG through ``dvc repro``, in a scratch repository.

Checks the DVC contract too: a second ``dvc repro`` runs nothing, and changing only the window
reruns only ``slices``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dvc_scratch import scratch_repo

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


def _stages_run(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


@pytest.mark.slow
def test_dvc_repro_whole_dag(tmp_path, real_data_dir):
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    work = scratch_repo(tmp_path, params)
    env = dict(os.environ, GVAE_DATA_MIRROR=str(real_data_dir), MPLBACKEND="Agg")
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
    ):
        _run(cmd, work, env)

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
