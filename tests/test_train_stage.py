"""``gvae train`` / ``gvae sample`` through the CLI on a tiny MNIST-format folder."""

from __future__ import annotations

import json

import numpy as np
import yaml

from pipeline.cli import main

from .conftest import REPO


def _tiny(tmp_path, steps: int):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    np.savez(data / "data.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(steps=steps, batch_size=4, checkpoint_every=2, sample_every=2)
    raw["evaluate"]["n_samples"] = 12
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    return params, data


def _train(params, data, out, *extra):
    return main(
        [
            "train",
            "--params",
            str(params),
            "--model",
            "gvae",
            "--dataset",
            "mnist",
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def test_train_resume_and_sample(tmp_path, capsys):
    params, data = _tiny(tmp_path, steps=2)
    out = tmp_path / "run"
    assert _train(params, data, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["model"] == "gvae"
    # Resuming a finished run runs nothing, says so, and keeps the real run's figures.
    assert _train(params, data, out, "--resume") == 0
    assert "nothing left to run" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text()) == summary
    # A longer budget continues from the checkpoint.
    params, _ = _tiny(tmp_path, steps=4)
    assert _train(params, data, out, "--resume") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["steps_run"] == 2

    samples = tmp_path / "samples"
    code = main(["sample", "--params", str(params), "--run", str(out), "--out", str(samples)])
    assert code == 0
    images = np.load(samples / "samples.npz")["images"]
    assert images.shape == (12, 1, 32, 32) and np.abs(images).max() <= 1.0
    assert (samples / "grid.png").stat().st_size > 100


def _set(params, section, **values):
    raw = yaml.safe_load(params.read_text())
    raw[section].update(values)
    params.write_text(yaml.safe_dump(raw))


def test_resume_if_compatible_continues_or_starts_afresh(tmp_path, capsys):
    """What `dvc repro` runs: an interrupted run continues; a stale checkpoint never does."""
    params, data = _tiny(tmp_path, steps=2)
    out = tmp_path / "run"
    assert _train(params, data, out, "--resume-if-compatible") == 0  # no checkpoint: fresh
    first = json.loads((out / "summary.json").read_text())
    assert first["steps_run"] == 2

    # More steps asked (an interrupted or extended run): continues from step 2.
    _set(params, "train", steps=4)
    assert _train(params, data, out, "--resume-if-compatible") == 0
    assert json.loads((out / "summary.json").read_text())["steps_run"] == 2
    assert "starting afresh" not in capsys.readouterr().err

    # A trajectory setting changed: the old checkpoint is dropped with its samples, and says so.
    (out / "samples" / "step-999999.png").write_bytes(b"stale")
    _set(params, "train", lr=0.001)
    assert _train(params, data, out, "--resume-if-compatible") == 0
    err = capsys.readouterr().err
    assert "starting afresh: cannot resume with changed train settings ['lr']" in err
    assert json.loads((out / "summary.json").read_text())["steps_run"] == 4
    assert not (out / "samples" / "step-999999.png").exists()

    # Other training data (same shape and settings): afresh too, never a silent continuation.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    np.savez(data / "data.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    assert _train(params, data, out, "--resume-if-compatible") == 0
    assert "trained on other data" in capsys.readouterr().err

    # Fewer steps than the checkpoint holds: afresh (a longer-trained model is not this run).
    _set(params, "train", steps=2)
    assert _train(params, data, out, "--resume-if-compatible") == 0
    assert "beyond the 2 steps asked for" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["steps"] == 2

    # The strict flag still refuses an incompatible checkpoint, naming the file.
    _set(params, "train", lr=0.002)
    assert _train(params, data, out, "--resume") == 2
    assert f"{out / 'checkpoint.pt'}: cannot resume" in capsys.readouterr().err


def test_fractions_no_longer_listed_are_removed(tmp_path, capsys):
    from pipeline.stages.train import _drop_stale_fractions

    for name in ("f1.0", "f0.5", "f0.1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "fnotes").mkdir()  # not a run folder: left alone
    _drop_stale_fractions(tmp_path, [1.0, 0.1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.1", "f1.0", "fnotes"]
    assert "f0.5: removed" in capsys.readouterr().err


def test_cli_errors_are_one_line_naming_the_file(tmp_path):
    """A missing input is a one-line error (exit 2), also through ``python -m pipeline.cli``."""
    import subprocess
    import sys

    argv = ["train", "--model", "vae", "--dataset", "mnist", "--data", str(tmp_path / "none")]
    argv += ["--out", str(tmp_path / "run")]
    for cmd in (["gvae"], [sys.executable, "-m", "pipeline.cli"]):
        proc = subprocess.run(
            [*cmd, *argv], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 2, proc.stderr
        missing = tmp_path / "none" / "data.npz"
        expected = f"gvae train: error: {missing}: not found (run `gvae mnist` first)"
        assert proc.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "run").exists()  # nothing half-written
