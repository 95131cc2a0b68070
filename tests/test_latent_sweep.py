"""The paper's latent-size study (Table 5) as a ``dvc exp`` sweep, in miniature.

The README's commands on a scratch copy of the repository with tiny params: two latent sizes
queued with ``-S`` overrides for the GVAE MNIST stages only, run with ``--run-all``, compared
with ``dvc exp show``. The shared upstream stages (MNIST, classifier) run once in the baseline
commit, so every experiment retrains, samples and evaluates only the GVAE.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dvc_scratch import scratch_repo
from tests.test_e2e_dvc import TINY, _merge

REPO = Path(__file__).resolve().parents[1]
LATENT = "models.gvae.model.latent_dim"
TARGET = "evaluate@mnist-gvae-0"  # + its upstream: train@mnist-gvae-0, sample@mnist-gvae-0
# The git-tracked headline metrics (MMD, MS-SSIM, FID): what `dvc exp show` lists by default.
METRICS = "data/eval/mnist/gvae/s0/headline.json"
SIZES = (4, 8)
# The README's comparison table: only the latent size, MMD and MS-SSIM columns.
KEEP = r"Experiment|models\.gvae\.model\.latent_dim|(.*gvae/s0/headline\.json:)?(mmd_x1e4|ms_ssim)$"


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _experiments(show: list[dict]) -> dict[str, dict]:
    """``{experiment name: its data}`` from ``dvc exp show --json``."""
    out = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                out[rev["name"]] = rev["data"]
    return out


@pytest.mark.slow
def test_latent_size_sweep_with_dvc_exp(tmp_path, real_data_dir):
    # TINY with a shorter classifier: it only has to exist for the GVAE's evaluation.
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    params["classifier"]["steps"] = 5
    work = scratch_repo(tmp_path, params)
    env = dict(
        os.environ,
        GVAE_DATA_MIRROR=str(real_data_dir),
        MPLBACKEND="Agg",
        # The stages import this copy; tiny nets run faster on one thread than on contended two.
        PYTHONPATH=str(work),
        OMP_NUM_THREADS="1",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.invalid",
    )
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "repro", "classifier@mnist"],  # shared by every experiment: run once
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "baseline"],
    ):
        _run(cmd, work, env)

    for size in SIZES:
        _run(["dvc", "exp", "run", "--queue", "-S", f"{LATENT}={size}", TARGET], work, env)
    _run(["dvc", "exp", "run", "--run-all", "--jobs", "2"], work, env)

    exps = _experiments(json.loads(_run(["dvc", "exp", "show", "--json"], work, env)))
    assert len(exps) == len(SIZES), exps.keys()
    by_size, trained = {}, set()
    for name, data in exps.items():
        latent = data["params"]["params.yaml"]["data"]["models"]["gvae"]["model"]["latent_dim"]
        metrics = data["metrics"][METRICS]["data"]
        assert math.isfinite(metrics["mmd_x1e4"]), (name, metrics)
        by_size[latent] = metrics["mmd_x1e4"]
        trained.add(data["outs"]["data/models/mnist/gvae/s0"]["hash"])
    assert sorted(by_size) == list(SIZES), by_size
    assert None not in trained and len(trained) == len(SIZES), "one trained GVAE per latent size"

    # Only the GVAE's stages ran in the experiments; MNIST and the classifier came from the cache.
    logs = _run(["dvc", "queue", "logs", next(iter(exps))], work, env)
    ran = {line.split("'")[1] for line in logs.splitlines() if line.startswith("Running stage '")}
    assert ran == {"train@mnist-gvae-0", "sample@mnist-gvae-0", TARGET}, ran

    table = _run(["dvc", "exp", "show", "--drop", ".*", "--keep", KEEP, "--csv"], work, env)
    rows = list(csv.DictReader(io.StringIO(table)))
    assert set(rows[0]) == {"Experiment", LATENT, "mmd_x1e4", "ms_ssim"}, list(rows[0])
    shown = {int(r[LATENT]): float(r["mmd_x1e4"]) for r in rows if r["Experiment"] in exps}
    assert shown == by_size, (shown, by_size)
