"""Mode-collapse flag of ``gvae evaluate``: class entropy of the trainer's snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.params.sanity import EvaluateParams
from pipeline.sanity import evaluate


def _one_hot_by_brightness(clf, images, batch_size):
    # A stand-in classifier: class = round(9 * mean brightness in [0, 1]).
    cls = ((images.mean(dim=(1, 2, 3)) + 1) / 2 * 9).round().long().clamp(0, 9)
    return torch.nn.functional.one_hot(cls, 10).double()


def _snapshot(run_dir, step: int, classes: list[int]) -> None:
    images = np.stack([np.full((1, 8, 8), c / 9 * 2 - 1, np.float32) for c in classes])
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "samples" / f"step-{step:06d}.npz", images=images.astype(np.float16))


def test_snapshots_give_the_trajectory_and_flag_a_collapse(tmp_path, monkeypatch):
    monkeypatch.setattr("models.eval.classifier.predict_proba", _one_hot_by_brightness)
    run_dir = tmp_path / "run"
    _snapshot(run_dir, 100, list(range(10)) * 3)  # every class: entropy log 10
    _snapshot(run_dir, 50, [0, 1] * 15)  # two classes: log 2 / log 10 = 0.301
    _snapshot(run_dir, 150, [4] * 29 + [5])  # nearly one class
    params = EvaluateParams()
    result = evaluate.stability(run_dir, None, params)
    assert result["steps"] == [50, 100, 150]  # by step, not by file order
    norm = result["class_entropy_norm"]
    assert norm[0] == pytest.approx(np.log(2) / np.log(10)) and norm[1] == pytest.approx(1.0)
    assert result["collapsed"] and result["judged_from"] == 50
    assert result["reason"].startswith("fell 0.9") and result["reason"].endswith("at step 150")
    assert evaluate.stability(tmp_path / "no_snapshots", None, params) is None


def test_warmup_snapshots_are_not_judged(tmp_path, monkeypatch):
    monkeypatch.setattr("models.eval.classifier.predict_proba", _one_hot_by_brightness)
    run_dir = tmp_path / "run"
    _snapshot(run_dir, 50, list(range(10)) * 3)  # noise of a barely trained net: every class
    _snapshot(run_dir, 100, [0, 1] * 15)  # the first learned shapes
    for step in (300, 600):
        _snapshot(run_dir, step, list(range(10)) * 2)
    result = evaluate.stability(run_dir, None, EvaluateParams())  # warmup 0.1: step 60
    assert result["judged_from"] == 100 and not result["collapsed"]
    assert result["steps"] == [50, 100, 300, 600]  # the trajectory keeps every snapshot
    judged_all = evaluate.stability(
        run_dir, None, EvaluateParams(collapse={"drop": 0.15, "warmup": 0.0})
    )
    assert judged_all["collapsed"] and judged_all["reason"].endswith("at step 100")
