"""Usage recipes of a synthetic source in the segmentation grid (mix, pretrain, filter), the
condition names that say them, and the params behind them.

Fixtures: tests/segment_fixtures.py over tests/test_segment.py's 16 px fakes. The filter's
exact answers come from a fixed segmenter (``image > 0``) on hand-built slices.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

import pipeline.augment.segment.train as train_mod
from pipeline.augment.segment.experiment import run_name, training_subset
from pipeline.augment.segment.grid import load_dataset, run_experiment
from pipeline.augment.segment.recipes import score_synthetic, select_by_dice
from pipeline.errors import ParamsError
from pipeline.params.loader import load_section
from pipeline.params.segment import SegmentParams, expand_conditions, parse_condition
from tests.conftest import REPO
from tests.segment_fixtures import (
    QUIET,
    FixedSegmenter,
    fixed_filter,
    real_and_synthetic,
    scored_slices,
    write_synthetic,
)
from tests.test_segment import SPLITS, TINY, TRAIN, fake_slices, write_folder


@pytest.fixture()
def folders_syn(tmp_path):
    return real_and_synthetic(tmp_path)


def _marked_synthetic(n=8):
    """Synthetic slices whose corner pixel is exactly 0.9 (real fake slices never are)."""
    image, mask = fake_slices(n, np.random.default_rng(5))
    image[:, 0, 0, 0] = 0.9
    return image, mask


def test_pretrain_runs_the_synthetic_phase_then_the_real_phase(tmp_path, monkeypatch):
    """An optimizer-step spy sees 3 synthetic-only steps, then 3 real-only steps (steps 6,
    share 0.5); the mix run takes the same 6 steps on mixed batches."""
    real = write_folder(tmp_path / "slices", SPLITS)
    syn = write_synthetic(tmp_path / "syn", *_marked_synthetic())
    seen: list[str] = []
    last: dict = {}
    augment = train_mod.augment_batch

    def spy_augment(pipe, image, mask, flags, device=None):
        marked = image[:, 0, 0, 0] == np.float32(0.9)
        last["kind"] = "syn" if marked.all() else "real" if not marked.any() else "both"
        return augment(pipe, image, mask, flags, device)

    step = torch.optim.Adam.step

    def spy_step(self, *args, **kwargs):
        seen.append(last["kind"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(train_mod, "augment_batch", spy_augment)
    monkeypatch.setattr(torch.optim.Adam, "step", spy_step)
    params = SegmentParams(**{**TINY, "conditions": ("real+syn/pretrain",), "fractions": (1.0,),
                              "steps": 6, "pretrain": {"synthetic_share": 0.5}})  # fmt: skip
    run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, **QUIET)
    assert seen == ["syn"] * 3 + ["real"] * 3
    record = json.loads((tmp_path / "out/runs/real+syn-gvae-pretrain__f1.0__s0.json").read_text())
    assert record["phase_steps"] == {"synthetic": 3, "real": 3}
    assert (record["n_real"], record["n_synthetic"]) == (12, 12)  # the mix run's data
    seen.clear()
    mix = SegmentParams(**{**params.model_dump(), "conditions": ("real+syn",)})
    run_experiment(mix, real, tmp_path / "mix", {("gvae", None): syn}, **QUIET)
    assert len(seen) == 6 and "both" in seen


@pytest.mark.parametrize(
    ("min_dice", "kept"),
    [(0.5, [0, 1, 2, 5]), (0.4, [0, 1, 2, 3, 5]), (1.0, [0, 5]), (0.0, [0, 1, 2, 3, 4, 5])],
)
def test_filter_keeps_exactly_the_slices_at_or_above_the_threshold(min_dice, kept):
    image, mask, dice = scored_slices()
    scores = score_synthetic(FixedSegmenter(), image, mask, batch_size=4)
    np.testing.assert_allclose(scores, dice)
    result = select_by_dice(scores, min_dice, "test set")
    assert result.keep.tolist() == kept  # the threshold itself is kept (>=)
    assert result.record()["kept_share"] == pytest.approx(len(kept) / 6)


def test_filter_in_the_grid_uses_the_fractions_real_patients_and_records_the_kept_share(
    tmp_path, monkeypatch
):
    real = write_folder(tmp_path / "slices", SPLITS)
    image, mask, _ = scored_slices()
    syn = write_synthetic(tmp_path / "syn", image, mask)
    calls: list[dict] = []
    fixed_filter(monkeypatch, calls)
    params = SegmentParams(**{**TINY, "conditions": ("real+syn/filter",), "fractions": (0.5,),
                              "seeds": (0, 1), "filter": {"min_dice": 0.5}})  # fmt: skip
    summary = run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, **QUIET)
    # The filter UNet: the real slices of the f=0.5 subset, no augmentation, the run's seed.
    subset = training_subset(TRAIN, 0.5, params.subset_seed, params.min_patients)
    data = load_dataset(real)
    expected = data.train_image[np.isin(data.train_case, subset)]
    assert [c["seed"] for c in calls] == [0, 1]
    for c in calls:
        np.testing.assert_array_equal(c["image"], expected)
        assert not c["augment"].any()
    for seed in (0, 1):
        record = json.loads((tmp_path / f"out/runs/{run_name('real+syn:gvae/filter', 0.5, seed)}"
                             ".json").read_text())  # fmt: skip
        f = record["filter"]
        assert (f["scored"], f["kept"], f["min_dice"]) == (6, 4, 0.5)
        assert f["kept_share"] == pytest.approx(4 / 6)
        assert f["patients"] == subset and f["network"] == "trained"
        assert record["synthetic_pool"] == 4
    (row,) = summary["rows"]
    assert row["filter_kept_share"] == pytest.approx(4 / 6)
    (line,) = [r for r in csv.DictReader((tmp_path / "out/results.csv").open())]
    assert float(line["filter_kept_share"]) == pytest.approx(4 / 6)
    assert "6 / 6 (kept 67%)" in (tmp_path / "out/table.md").read_text()
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["f0.5"]["real+syn:gvae/filter"]["filter_kept_share"] == pytest.approx(4 / 6)


def test_filter_reuses_the_real_runs_network_with_the_same_scores(tmp_path, folders_syn):
    """With `real` in the grid the filter reuses its network; without, it trains the same one."""
    real, syn = folders_syn
    base = {**TINY, "fractions": (1.0,), "filter": {"min_dice": 0.0}}
    out = {}
    for name, conditions in (
        ("both", ("real", "real+syn/filter")),
        ("alone", ("real+syn/filter",)),
    ):
        params = SegmentParams(**{**base, "conditions": conditions})
        run_experiment(params, real, tmp_path / name, {("gvae", None): syn}, **QUIET)
        out[name] = json.loads(
            (tmp_path / name / "runs/real+syn-gvae-filter__f1.0__s0.json").read_text()
        )["filter"]
    assert (out["both"]["network"], out["alone"]["network"]) == ("reused", "trained")
    assert out["both"]["dice_median"] == out["alone"]["dice_median"]
    assert out["both"]["dice_max"] == out["alone"]["dice_max"]


def test_a_filter_that_keeps_nothing_names_the_setting_and_writes_nothing(tmp_path, monkeypatch):
    real = write_folder(tmp_path / "slices", SPLITS)
    image, mask, _ = scored_slices()
    syn = write_synthetic(tmp_path / "syn", image[1:5], mask[1:5])  # best Dice 2/3
    fixed_filter(monkeypatch, [])
    params = SegmentParams(**{**TINY, "conditions": ("real+syn/filter",), "fractions": (1.0,),
                              "filter": {"min_dice": 0.9}})  # fmt: skip
    with pytest.raises(
        ValueError, match=r"segment.filter.min_dice=0.9: .*none of the 4 .*best Dice seen was 0.667"
    ):
        run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, **QUIET)
    assert list((tmp_path / "out" / "runs").iterdir()) == []
    assert not (tmp_path / "out" / "table.md").exists()


# ----------------------------------------------------------------------------- names and params
def test_condition_names_say_source_and_recipe():
    c = parse_condition("real+classical+syn:gvae/filter")
    assert (c.name, c.real, c.classical, c.model, c.recipe, c.control) == (
        "real+classical+syn:gvae/filter", True, True, "gvae", "filter", None)  # fmt: skip
    assert parse_condition("real+classical+syn:gvae").recipe == "mix"
    assert parse_condition("real+syn:vae/mix").name == "real+syn:vae"  # one name for mix
    assert parse_condition("syn:vae/filter").real is False
    ctrl = parse_condition("real+classical+cutmix")
    assert (ctrl.control, ctrl.classical, ctrl.model) == ("cutmix", True, None)
    names = [c.name for c in expand_conditions(
        ["real", "real+classical+carvemix", "real+classical+syn/pretrain", "syn:b/filter"],
        ["a", "b"])]  # fmt: skip
    assert names == ["real", "real+classical+carvemix", "real+classical+syn:a/pretrain",
                     "real+classical+syn:b/pretrain", "syn:b/filter"]  # fmt: skip
    assert run_name("real+classical+syn:gvae/filter", 0.5, 2) == (
        "real+classical+syn-gvae-filter__f0.5__s2"
    )
    with pytest.raises(ValueError, match="repeated"):
        expand_conditions(["real+syn:a", "real+syn:a/mix"], ["a"])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("real+syn:gvae/finetune", r"unknown recipe 'finetune'.*recipes: mix, pretrain, filter"),
        ("real+classical+carvemix/filter", "only the syn kinds take a recipe"),
        ("real+classical+mixup", r"unknown condition 'real\+classical\+mixup'"),
        ("syn:gvae/pretrain", "syn kind has none"),
        ("real+classical+cutmix:gvae", "unknown condition"),
    ],
)
def test_bad_condition_names_are_named(name, message):
    with pytest.raises(ValueError, match=message):
        parse_condition(name)
    with pytest.raises(ValidationError, match=message):
        SegmentParams(conditions=("real", name))


def _params_file(tmp_path, **segment):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["segment"].update(segment)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"filter": {"min_dice": 1.5}}, "segment.filter.min_dice"),
        ({"filter": {"min_dice": -0.1}}, "segment.filter.min_dice"),
        ({"mixing": {"prob": 1.2}}, "segment.mixing.prob"),
        ({"mixing": {"carve_margin_px": [4, 1]}}, "segment.mixing.carve_margin_px"),
        ({"mixing": {"cutmix_alpha": 0}}, "segment.mixing.cutmix_alpha"),
        ({"mixing": {"margin": 3}}, "unknown key 'segment.mixing.margin'"),
        ({"pretrain": {"synthetic_share": 1.0}}, "segment.pretrain.synthetic_share"),
        ({"conditions": ["real+syn:gvae/pretrain"], "steps": 1}, "leaves a phase without steps"),
        ({"conditions": ["real+syn:gvae/bogus"]}, "unknown recipe 'bogus'"),
        ({"seeds_by_fraction": {0.5: [0, 1]}}, "seeds_by_fraction names fractions \\[0.5\\]"),
        ({"seeds_by_fraction": {1.0: [1, 1]}}, "without repeats"),
    ],
)
def test_bad_params_name_the_setting(tmp_path, setting, message):
    with pytest.raises(ParamsError, match=message):
        load_section(_params_file(tmp_path, **setting), "segment")


def test_default_runs_one_control_and_the_conditional_generator_full_runs_all(tmp_path):
    """The default `dvc repro` shows CarveMix and the cGVAE (recipe mix) end to end at smoke
    scale and keeps its budget (no CutMix, no pretrain/filter); `full` runs both controls, both
    recipes and every generator, the conditional one included."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    default = SegmentParams(**raw["segment"])
    parsed = [parse_condition(c, True) for c in default.conditions]
    assert [c.name for c in parsed if c.control] == ["real+classical+carvemix"]
    assert all(c.recipe == "mix" for c in parsed if not c.control)
    assert "real+classical+syn:cgvae" in default.conditions and "cgvae" in raw["ct"]["models"]
    raw.update(profile="full")
    raw["mnist"].update(seeds=[0, 1, 2], datasets=["mnist", "fashion_mnist"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    full = load_section(path, "segment")
    names = {c.name for c in expand_conditions(full.conditions, full.models)}
    new = {"real+classical+carvemix", "real+classical+cutmix",
           "real+classical+syn:gvae/pretrain", "real+classical+syn:gvae/filter",
           "real+classical+syn:cgvae/filter", "real+classical+syn:cgvae/pretrain"}  # fmt: skip
    assert new <= names


def test_seeds_by_fraction_runs_more_seeds_where_named_and_keeps_fingerprints():
    """Five seeds at the smallest fraction, `seeds` elsewhere; the per-fraction list is a grid
    list like `seeds`, so naming it does not invalidate runs already done."""
    from pipeline.augment.segment.experiment import plan_runs
    from pipeline.augment.segment.grid import fingerprint

    base = SegmentParams(conditions=["real"], fractions=[1.0, 0.1], seeds=[0, 1, 2])
    more = base.model_copy(update={"seeds_by_fraction": {0.1: (0, 1, 2, 3, 4)}})
    runs = [(r.fraction, r.seed) for r in plan_runs(more)]
    assert runs == [(1.0, 0), (1.0, 1), (1.0, 2)] + [(0.1, s) for s in range(5)]
    data = SimpleNamespace(index={"size": 64})
    assert fingerprint(base, data, None) == fingerprint(more, data, None)
