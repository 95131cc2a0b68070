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
