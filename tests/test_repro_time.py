"""The per-stage timing of benchmarks/repro_time.py, on DVC output lines with known stamps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "repro_time.py"


@pytest.fixture(scope="module")
def repro_time():
    spec = importlib.util.spec_from_file_location("repro_time", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_seconds_from_dvc_output(repro_time):
    lines = [
        (0.5, "Running stage 'phantom':"),
        (0.6, "> gvae phantom --params params.yaml --out data/raw/phantom"),
        (18.0, "Updating lock file 'dvc.lock'"),
        (18.1, "Stage 'ingest' didn't change, skipping"),
        (19.0, "Running stage 'train@mnist-vae-0':"),
        (40.0, "Running stage 'train@mnist-gvae-0':"),  # no lock line: closed by the next start
        (100.0, "ERROR: failed to reproduce 'train@mnist-gvae-0': exit 2"),
        (101.0, "Running stage 'segment':"),
        (130.0, "Running stage 'segment':"),  # resumed after an interruption
        (150.0, "Updating lock file 'dvc.lock'"),
        (160.0, "Running stage 'report':"),
        (170.0, "some output, then the log ends"),
    ]
    rows = repro_time.stage_seconds(lines)
    got = [(r["stage"], round(r["seconds"], 6), r["status"]) for r in rows]
    assert got == [
        ("phantom", 17.5, "ok"),
        ("train@mnist-vae-0", 21.0, "unfinished"),
        ("train@mnist-gvae-0", 60.0, "failed"),
        ("segment", 49.0, "ok"),
        ("report", 10.0, "unfinished"),
    ]
    assert repro_time.stage_seconds([]) == []


def test_read_log_round_trips_the_printed_stamps(repro_time, tmp_path):
    log = tmp_path / "repro.log"
    log.write_text("3 Running stage 'a':\n9 Updating lock file 'dvc.lock'\nnot stamped\n12 done\n")
    lines, wall = repro_time.read_log(log)
    assert wall == 12.0 and lines[0] == (3.0, "Running stage 'a':")
    assert repro_time.stage_seconds(lines) == [{"stage": "a", "seconds": 6.0, "status": "ok"}]
