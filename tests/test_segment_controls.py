"""Mixing controls of the segmentation grid: CarveMix, CutMix, their leakage guard, best control.

Fixtures: tests/segment_fixtures.py over tests/test_segment.py's 16 px fakes; networks train for
a handful of CPU steps. Exact answers come from hand-built slices, never a trained network.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import pipeline.augment.segment.recipes as recipes
from pipeline.augment.segment.experiment import training_subset
from pipeline.augment.segment.grid import run_experiment
from pipeline.augment.segment.mixing import Mixer, build_mixer, carvemix, cutmix, cutmix_box
from pipeline.augment.segment.results import aggregate, table_markdown
from pipeline.params.segment import MixingParams, SegmentParams
from tests.segment_fixtures import QUIET, fixed_filter, real_and_synthetic
from tests.test_segment import SIZE, SPLITS, TINY, TRAIN, fake_slices, write_folder


@pytest.fixture()
def folders_syn(tmp_path):
    return real_and_synthetic(tmp_path)


def brute_carve(mask: np.ndarray, margin: float) -> np.ndarray:
    """Pixels within ``margin`` of the mask, by checking every pixel against every mask pixel."""
    pts = np.argwhere(mask[0] > 0)
    rows, cols = np.indices(mask.shape[-2:])
    d2 = (rows[..., None] - pts[:, 0]) ** 2 + (cols[..., None] - pts[:, 1]) ** 2
    return (d2.min(-1) <= margin**2)[None]


# ----------------------------------------------------------------------------- CarveMix / CutMix
@pytest.mark.parametrize("margin", [0, 1, 3])
def test_carvemix_changes_only_the_carved_region_and_carries_its_label(margin):
    rng = np.random.default_rng(margin)
    (t_img, s_img), (t_msk, s_msk) = (np.split(a, 2) for a in fake_slices(2, rng))
    t_img, s_img, t_msk, s_msk = t_img[0], s_img[0], t_msk[0], s_msk[0]
    s_img = s_img + 0.05  # every source pixel differs from every target pixel
    before = [a.copy() for a in (t_img, t_msk, s_img, s_msk)]
    image, mask, region = carvemix(t_img, t_msk, s_img, s_msk, margin)
    np.testing.assert_array_equal(region, brute_carve(s_msk, margin))
    assert region.sum() == 16 if margin == 0 else region.sum() > 16  # the 4x4 pancreas, grown
    np.testing.assert_array_equal(image[region], s_img[region])  # carved: the source
    np.testing.assert_array_equal(mask[region], s_msk[region])  # with its label, exactly
    np.testing.assert_array_equal(image[~region], t_img[~region])  # elsewhere: untouched
    np.testing.assert_array_equal(mask[~region], t_msk[~region])
    assert (image != t_img).sum() == region.sum()  # every carved pixel did change
    assert mask.dtype == t_msk.dtype and image.dtype == t_img.dtype
    for a, b in zip(before, (t_img, t_msk, s_img, s_msk), strict=True):
        np.testing.assert_array_equal(a, b)  # inputs untouched


def test_cutmix_changes_only_its_box_and_carries_its_label():
    rng = np.random.default_rng(0)
    img, msk = fake_slices(2, rng)
    t_img, t_msk, s_img, s_msk = img[0], msk[0], img[1] + 0.05, msk[1]
    image, mask, region = cutmix(t_img, t_msk, s_img, s_msk, (3, 9, 5, 16))
    assert region.sum() == 6 * 11 and region[0, 3:9, 5:16].all()
    np.testing.assert_array_equal(image[region], s_img[region])
    np.testing.assert_array_equal(mask[region], s_msk[region])
    np.testing.assert_array_equal(image[~region], t_img[~region])
    np.testing.assert_array_equal(mask[~region], t_msk[~region])
    # Yun et al.'s box: sides size * sqrt(1 - lam), clipped at the edges.
    for seed in range(20):
        r0, r1, c0, c1 = cutmix_box(16, 0.75, np.random.default_rng(seed))
        assert 0 <= r0 < r1 <= 16 and 0 <= c0 < c1 <= 16
        assert r1 - r0 <= 8 and c1 - c0 <= 8
        if 4 <= (r0 + r1) / 2 <= 12 and r0 > 0 and r1 < 16:
            assert r1 - r0 == 8  # a box away from the edges is the full 8 px


def _labelled_pool(n=4):
    """Slice k: value k/10 everywhere, its pancreas at a place of its own; slice 0 empty."""
    image = np.stack([np.full((1, SIZE, SIZE), k / 10, np.float32) for k in range(n)])
    mask = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    for k in range(1, n):
        mask[k, 0, 2 * k : 2 * k + 3, 3 * k : 3 * k + 3] = 1
    return image, mask


@pytest.mark.parametrize("kind", ["carvemix", "cutmix"])
def test_mixer_pastes_a_share_from_other_pool_slices_seeded(kind):
    image, mask = _labelled_pool()
    cases = np.array(["Z", "A", "B", "C"])  # patient Z holds only the pancreas-free slice
    params = MixingParams(prob=1.0, carve_margin_px=(0, 2))
    mixer = build_mixer(kind, image, mask, cases, params, seed=3)
    # CarveMix carves only where there is a pancreas: the empty slice 0 is never a source.
    assert mixer.pool.tolist() == ([1, 2, 3] if kind == "carvemix" else [0, 1, 2, 3])
    assert mixer.sources == (["A", "B", "C"] if kind == "carvemix" else ["A", "B", "C", "Z"])
    idx = np.array([0, 1, 2, 3] * 5)
    out_img, out_msk = mixer(idx, image[idx], mask[idx])
    assert mixer.pasted == len(idx)
    for i, target in enumerate(idx):
        values = set(np.unique(out_img[i]).tolist()) - {float(image[target].flat[0])}
        assert len(values) <= 1  # one source per sample
        for v in values:
            src = int(round(v * 10))
            assert src != target and src in mixer.pool  # another slice of the pool
            region = out_img[i] == image[src]
            np.testing.assert_array_equal(out_msk[i][region], mask[src][region])
            np.testing.assert_array_equal(out_msk[i][~region], mask[target][~region])
    again = build_mixer(kind, image, mask, cases, params, seed=3)(idx, image[idx], mask[idx])
    np.testing.assert_array_equal(again[0], out_img)  # seeded
    none = build_mixer(kind, image, mask, cases, MixingParams(prob=0.0), seed=3)
    np.testing.assert_array_equal(none(idx, image[idx], mask[idx])[0], image[idx])
    with pytest.raises(ValueError, match="unknown mixing control"):
        Mixer("mixup", image, mask, np.arange(4), [], params, 0)


# ----------------------------------------------------------------------------- leakage
def test_carve_sources_and_filter_unets_come_from_the_fractions_own_patients(tmp_path, folders_syn):
    real, syn = folders_syn
    params = SegmentParams(**{**TINY, "conditions": ("real+classical+carvemix",
                              "real+classical+cutmix", "real+classical+syn/filter"),
                              "filter": {"min_dice": 0.0}, "mixing": {"prob": 1.0}})  # fmt: skip
    run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, **QUIET)
    records = [json.loads(p.read_text()) for p in (tmp_path / "out/runs").iterdir()]
    assert len(records) == 6
    for r in records:
        subset = training_subset(TRAIN, r["fraction"], params.subset_seed, params.min_patients)
        if "mixing" in r:
            assert r["mixing"]["sources"] == subset  # every patient of the subset, no other
            assert r["mixing"]["pasted"] == TINY["steps"] * TINY["batch_size"]
        else:
            assert r["filter"]["patients"] == subset


def test_the_leakage_guard_covers_carve_sources_and_the_filter_unet(
    tmp_path, folders_syn, monkeypatch
):
    real, syn = folders_syn
    build = recipes.build_mixer

    def leaky_mixer(*args, **kwargs):
        mixer = build(*args, **kwargs)
        mixer.sources = [*mixer.sources, "P06"]  # a test patient among the carve sources
        return mixer

    monkeypatch.setattr(recipes, "build_mixer", leaky_mixer)
    params = SegmentParams(**{**TINY, "conditions": ("real+classical+carvemix",)})
    with pytest.raises(ValueError, match=r"leakage: test patient\(s\) \['P06'\]"):
        run_experiment(params, real, tmp_path / "a", **QUIET)
    assert list((tmp_path / "a" / "runs").iterdir()) == []

    training_set = recipes.build_training_set

    def leaky_real_set(*args, **kwargs):
        ts = training_set(*args, **kwargs)
        ts.cases = [*ts.cases, "P05"]  # a val patient in the filter UNet's training set
        return ts

    calls: list = []
    fixed_filter(monkeypatch, calls)
    monkeypatch.setattr(recipes, "build_training_set", leaky_real_set)
    params = SegmentParams(**{**TINY, "conditions": ("real+syn/filter",)})
    with pytest.raises(ValueError, match=r"leakage: val patient\(s\) \['P05'\]"):
        run_experiment(params, real, tmp_path / "b", {("gvae", None): syn}, **QUIET)
    assert calls == []  # stopped before the filter UNet trained


# ----------------------------------------------------------------------------- the controls' grid
def test_controls_in_the_grid_and_the_difference_against_the_best_control(tmp_path):
    real = write_folder(tmp_path / "slices", SPLITS)
    params = SegmentParams(**{**TINY, "conditions": ("real+classical", "real+classical+carvemix",
                                                     "real+classical+cutmix")})  # fmt: skip
    lines: list[str] = []
    summary = run_experiment(params, real, tmp_path / "out", log=lines.append)
    rows = {(r["condition"], r["fraction"]): r for r in summary["rows"]}
    for f in (1.0, 0.5):
        carve, cut = rows[("real+classical+carvemix", f)], rows[("real+classical+cutmix", f)]
        best = carve if carve["dice"] >= cut["dice"] else cut
        for r in (carve, cut, rows[("real+classical", f)]):
            assert r["best_control"] == best["condition"]
        assert best["diff_vs_control"] == 0.0
    assert any("carvemix pasted into" in line for line in lines)
    metrics = json.loads((tmp_path / "out/metrics.json").read_text())
    assert metrics["f1.0"]["real+classical"]["best_control"].startswith("real+classical+")
    assert "Dice - best control" in (tmp_path / "out/table.md").read_text()


def test_best_control_is_chosen_by_mean_dice_and_paired_per_patient():
    cases = ["P1", "P2", "P3", "P4"]

    def rec(cond, frac, dice, **extra):
        patients = {c: {"dice": d, "hd95": 5.0} for c, d in zip(cases, dice, strict=True)}
        return {"condition": cond, "fraction": frac, "seed": 0, "n_train_patients": 4,
                "n_real": 12, "n_synthetic": 0, "patients": patients, **extra}  # fmt: skip

    classical = [0.6, 0.6, 0.8, 0.9]
    carve = [0.7, 0.6, 0.8, 0.9]  # mean 0.75
    cut = [0.6, 0.7, 0.9, 0.9]  # mean 0.775: the best control
    filt = [0.8, 0.7, 0.8, 0.9]
    records = [
        rec("real+classical", 1.0, classical), rec("real+classical+carvemix", 1.0, carve),
        rec("real+classical+cutmix", 1.0, cut),
        rec("real+classical+syn:gvae/filter", 1.0, filt, filter={"kept_share": 0.25}),
        rec("real+classical+syn:gvae/filter", 1.0, filt, filter={"kept_share": 0.75}),
        rec("real+classical", 0.5, classical),
    ]  # fmt: skip
    params = SegmentParams(**TINY)
    rows = {(r["condition"], r["fraction"]): r for r in aggregate(records, params)}
    f = rows[("real+classical+syn:gvae/filter", 1.0)]
    assert f["best_control"] == "real+classical+cutmix"
    assert f["diff_vs_control"] == pytest.approx(np.mean(np.subtract(filt, cut)))  # 0.025
    assert f["diff_control_lo"] <= f["diff_vs_control"] <= f["diff_control_hi"]
    assert f["filter_kept_share"] == pytest.approx(0.5)
    assert rows[("real+classical+carvemix", 1.0)]["diff_vs_control"] == pytest.approx(-0.025)
    assert rows[("real+classical+cutmix", 1.0)]["diff_vs_control"] == 0.0
    assert math.isnan(rows[("real+classical", 1.0)]["filter_kept_share"])
    lone = rows[("real+classical", 0.5)]  # no control at f=0.5
    assert lone["best_control"] is None and math.isnan(lone["diff_vs_control"])
    table = table_markdown(list(rows.values()), params)
    assert "| 0.025 [" in table and "(cutmix)" in table and "12 / 0 (kept 50%)" in table
