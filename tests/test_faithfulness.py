"""Mask faithfulness (issue: synthetic data that can pay off, section 4): the Dice of the
fraction's real-trained UNet on each synthetic set against the masks it carries, next to the
same statistic on real test slices (the ceiling). Exact values come from the fixed segmenter
(``image > 0``) standing in for the trained UNet."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import pipeline.augment.segment.train as train_mod
from pipeline.augment.segment.faithfulness import aggregate, read_rows
from pipeline.augment.segment.grid import load_dataset, run_experiment
from pipeline.augment.segment.train import TrainResult, slice_dice
from pipeline.params.segment import SegmentParams
from tests.segment_fixtures import (
    QUIET,
    FixedSegmenter,
    fixed_filter,
    scored_slices,
    write_synthetic,
)
from tests.test_segment import SPLITS, TINY, write_folder


@pytest.fixture()
def fixed_unet(monkeypatch):
    """Every grid run's network is the fixed segmenter; the calls are counted."""
    calls = []

    def fake(phases, params, seed):
        calls.append(seed)
        return TrainResult(FixedSegmenter(), 0.0, 0.0, tuple(p.steps for p in phases))

    monkeypatch.setattr(train_mod, "train_phases", fake)
    fixed_filter(monkeypatch, [])  # a network trained again to score is the fixed one too
    return calls


def test_faithfulness_is_the_real_unets_dice_on_non_empty_synthetic_masks(tmp_path, fixed_unet):
    real = write_folder(tmp_path / "slices", SPLITS)
    image, mask, dice = scored_slices()  # Dice 1, 2/3, 0.5, 0.4, 0 and one empty mask
    syn = write_synthetic(tmp_path / "syn", image, mask)
    params = SegmentParams(**{**TINY, "conditions": ("real", "real+syn"), "fractions": (1.0,),
                              "seeds": (0, 1)})  # fmt: skip
    run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, **QUIET)
    data = load_dataset(real)
    ceiling = slice_dice(data.test_image > 0, data.test_mask).mean()  # every test mask non-empty
    for seed in (0, 1):
        rec = json.loads((tmp_path / f"out/faithfulness/gvae__f1.0__s{seed}.json").read_text())
        assert rec["faithfulness"] == pytest.approx(dice[:5].mean())  # the empty mask left out
        assert (rec["n_scored"], rec["network"]) == (5, "reused")
        assert rec["ceiling"] == pytest.approx(ceiling)
    (row,) = read_rows(tmp_path / "out")
    assert row["faithfulness"] == pytest.approx(dice[:5].mean())
    assert row["relative"] == pytest.approx(dice[:5].mean() / ceiling)
    assert f"{dice[:5].mean():.3f}" in (tmp_path / "out/faithfulness.md").read_text()
    assert len(fixed_unet) == 4  # real and real+syn, two seeds: nothing trained for the scores


def test_resume_keeps_scores_and_rescores_a_changed_synthetic_set(tmp_path, fixed_unet):
    real = write_folder(tmp_path / "slices", SPLITS)
    image, mask, dice = scored_slices()
    syn = write_synthetic(tmp_path / "syn", image, mask)
    params = SegmentParams(**{**TINY, "conditions": ("real", "real+syn"), "fractions": (1.0,),
                              "seeds": (0,)})  # fmt: skip
    out = tmp_path / "out"
    run_experiment(params, real, out, {("gvae", None): syn}, **QUIET)
    path = out / "faithfulness/gvae__f1.0__s0.json"
    first = path.stat().st_mtime_ns
    run_experiment(params, real, out, {("gvae", None): syn}, resume=True, **QUIET)
    assert path.stat().st_mtime_ns == first and len(fixed_unet) == 2  # read, not rescored
    # Only the perfect slice left: the real run is resumed, its network trained again to score.
    write_synthetic(tmp_path / "syn", image[:1], mask[:1])
    run_experiment(params, real, out, {("gvae", None): syn}, resume=True, **QUIET)
    rec = json.loads(path.read_text())
    assert (rec["faithfulness"], rec["n_scored"], rec["network"]) == (1.0, 1, "trained")


def test_aggregate_means_over_seeds_with_range_and_ceiling():
    recs = [
        {"model": "cgvae", "fraction": 0.1, "seed": s, "n_train_patients": 3, "n_scored": 10,
         "faithfulness": v, "ceiling": c}
        for s, v, c in ((0, 0.2, 0.4), (1, 0.4, 0.6), (2, float("nan"), 0.5))
    ]  # fmt: skip
    (row,) = aggregate(recs)
    assert row["faithfulness"] == pytest.approx(0.3) and row["ceiling"] == pytest.approx(0.5)
    assert (row["faithfulness_min"], row["faithfulness_max"], row["n_seeds"]) == (0.2, 0.4, 3)
    assert row["relative"] == pytest.approx(0.6)


def test_faithfulness_csv_round_trips(tmp_path, fixed_unet):
    real = write_folder(tmp_path / "slices", SPLITS)
    image, mask, _ = scored_slices()
    syn = write_synthetic(tmp_path / "syn", image, mask)
    params = SegmentParams(**{**TINY, "conditions": ("real", "real+syn"), "seeds": (0,)})
    run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, **QUIET)
    lines = list(csv.DictReader((tmp_path / "out/faithfulness.csv").open()))
    assert [(r["model"], float(r["fraction"])) for r in lines] == [("gvae", 1.0), ("gvae", 0.5)]
    assert all(np.isfinite(float(r["faithfulness"])) for r in lines)
