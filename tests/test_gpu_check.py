"""The GPU check (benchmarks/gpu_check.sh): its dry run end to end, in an environment that holds
only what the GPU machine will have (torch, numpy, the carried wheel list and the packages of
the GPU image it relies on), and the parts it cannot afford to get wrong there."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks import gpu_check, gpu_check_lib
from benchmarks.gpu_check_stages import write_params

REPO = Path(__file__).resolve().parents[1]
STAGES = ("slices", "train_ct:gvae", "generate:gvae", "segment", "ct_features", "ct_quality:gvae")


def bare_python(folder: Path) -> Path:
    """A virtual environment with links to this one's torch, numpy, the wheel list's and the
    image's packages and what they require, and nothing else (not this project)."""
    names = ["torch", "numpy", *gpu_check_lib.read_wheel_list(gpu_check.WHEEL_LIST)]
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    site = next((folder / "lib").glob("python3*/site-packages"))
    for name in gpu_check_lib.requirement_closure([*names, *gpu_check.FROM_IMAGE]):
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or ()} - {"..", "__pycache__"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not top.endswith(".pth") and not (site / top).exists():
                (site / top).symlink_to(source)
    return folder / "bin" / "python"


def finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def dry_run(tmp: Path, mirror: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """(process, report) of ``gpu_check.sh --dry-run`` in the bare environment, on slices that
    ``--prepare-data`` wrote here first: the GPU run's own workflow at dry-run size."""
    drop = ("PYTHONPATH", "OUT", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(GVAE_DATA_MIRROR=str(mirror), MPLBACKEND="Agg")
    data = ["--data", str(tmp / "data")]
    prepare = [sys.executable, "benchmarks/gpu_check.py", "--prepare-data", "--dry-run", *data]
    subprocess.run(prepare, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    env["PYTHON"] = str(bare_python(tmp / "bare"))
    cmd = ["bash", "benchmarks/gpu_check.sh", "--dry-run", *data, "--out", str(tmp / "out")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = tmp / "out" / "gpu_check.json"
    return proc, json.loads(report.read_text()) if report.exists() else {}


# One test, so that one process runs the dry run (about 90 s) even when pytest-xdist spreads
# the tests of a module over its workers.
@pytest.mark.slow
@pytest.mark.real_data
def test_dry_run_in_the_gpu_machines_environment(tmp_path, real_data_dir):
    proc, report = dry_run(tmp_path, real_data_dir)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert report["meta"]["status"] == "ok" and finite(report["meta"]["seconds"])
    # every listed package is there at its pin (links to .venv): nothing to install
    assert report["install"]["status"] == "skipped" and report["install"]["unmet"] == {}
    env = report["environment"]
    assert env["status"] == "ok" and env["cuda_available"] is False
    assert all(env["packages"][n] for n in gpu_check.FROM_IMAGE)
    assert set(env["flags"]) == set(gpu_check.RATE_KEYS)  # each script's --help was read
    assert list(report["benchmarks"]) == [name for name, *_ in gpu_check.BENCHMARKS]
    for name, script, *_ in gpu_check.BENCHMARKS:
        bench, key = report["benchmarks"][name], gpu_check.RATE_KEYS[script]
        assert bench["status"] == "ok", bench.get("error")
        assert bench["rows"] and all(finite(r[key]) and r[key] > 0 for r in bench["rows"])
    stages = report["stages"]
    assert list(stages) == list(STAGES)
    assert stages["slices"]["status"] == "prepared" and stages["slices"]["mode"] == "dry"
    assert finite(stages["slices"]["seconds_here"]) and stages["slices"]["figures"]["size"] == 32
    for name in STAGES[1:]:
        assert stages[name]["status"] == "ok", stages[name].get("error")
        assert finite(stages[name]["seconds"]) and stages[name]["seconds"] > 0
    assert finite(stages["train_ct:gvae"]["figures"]["f1.0"]["img_per_s"])
    assert stages["generate:gvae"]["figures"]["f1.0"]["kept"] > 0
    dice = {c: f["dice"] for c, f in stages["segment"]["figures"].items()}
    assert set(dice) == {"f1.0/real", "f1.0/real+classical", "f1.0/real+syn:gvae"}
    assert all(finite(d) and 0 <= d <= 1 for d in dice.values())
    assert finite(stages["ct_quality:gvae"]["figures"]["fid"])
    # the steps needed every carried wheel, and nothing beyond torch, numpy, list and image
    imports = report["imports"]
    assert imports["listed_not_imported"] == []  # no wheel travels for nothing
    assert imports["imported_not_listed"] == []  # ran on torch, numpy, the list and the image
    assert "monai" in imports["by_distribution"]  # the segment steps did import the list
    assert "segment" in imports["by_distribution"]["monai"]


def test_wheel_list_pins_the_versions_of_this_environment():
    pins = gpu_check_lib.read_wheel_list(gpu_check.WHEEL_LIST)
    assert {name: gpu_check_lib.installed_version(name) for name in pins} == pins
    assert not {"torch", "numpy"} & set(pins)  # the GPU machine's own build stays


def test_fetch_asks_for_binary_linux_wheels_of_each_python_version(tmp_path):
    versions = ["3.11", "3.12"]
    cmds = gpu_check_lib.fetch_commands("python3", tmp_path, versions, gpu_check.WHEEL_LIST)
    assert len(cmds) == len(versions)
    for cmd, version in zip(cmds, versions, strict=True):
        assert cmd[:4] == ["python3", "-m", "pip", "download"]
        assert {"--only-binary=:all:", "--no-deps"} <= set(cmd)
        assert cmd[cmd.index("--python-version") + 1] == version
        assert cmd[cmd.index("--requirement") + 1] == str(gpu_check.WHEEL_LIST)
        assert "manylinux2014_x86_64" in cmd


def test_gpu_params_are_the_paper_networks_at_128_px(tmp_path):
    import yaml

    path, models = write_params("gpu", tmp_path / "params.yaml")
    params = yaml.safe_load(path.read_text())
    assert models == ["gvae"] and "profile" not in params and "paper" not in params
    assert params["slices"]["size"] == 128 and params["slices"]["source"] == "pairs"
    assert params["models"]["gvae"]["model"]["width"] == 64  # the paper width, not the CPU's 8
    assert params["ct"]["train"]["steps"] == 300 and params["segment"]["steps"] == 300
    assert params["train"]["device"] == "cuda" and params["segment"]["device"] == "cuda"


def test_step_time_limit_kills_the_step_and_the_run_goes_on(tmp_path):
    log, deadline = tmp_path / "log", gpu_check_lib.Deadline(600)
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    result = gpu_check_lib.run_step("slow", slow, 2, deadline, log, dict(os.environ))
    assert result["status"] == "timeout" and result["seconds"] < 30
    assert "killed after 2 s" in result["error"] and "started" in result["error"]
    failing = [sys.executable, "-c", "import sys; sys.exit('bad input')"]
    result = gpu_check_lib.run_step("failing", failing, 30, deadline, log, dict(os.environ))
    assert result["status"] == "failed" and result["rc"] == 1 and "bad input" in result["error"]
    short = gpu_check_lib.Deadline(gpu_check_lib.RESERVE_S + 1)
    assert gpu_check_lib.run_step("late", slow, 30, short, log, {})["status"] == "skipped"
