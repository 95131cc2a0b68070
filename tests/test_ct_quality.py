"""CT quality: anatomy checks, distribution metrics, the feature net and the stages end to end.

Fixtures are toy "CT slices" at 32 px with the layout the pretext task relies on: an elliptic
body wider than tall, a bright spine posterior (bottom rows), a liver on the patient's right
(viewer's left) and a pancreas blob that is also the mask.
"""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch

from pipeline.augment.quality import metrics as Q
from pipeline.augment.quality.features import (
    CtFeatureNet,
    dihedral,
    features,
    load_feature_net,
    pretext_accuracy,
    save_feature_net,
    train_feature_net,
)
from pipeline.augment.quality.train_features import NET_NAME
from pipeline.cohort.slicing import window_hu
from pipeline.io.shards import FORMAT, ShardWriter, load_slices
from pipeline.params.quality import CtFeatureParams, MemorizationParams, QualityParams

SIZE = 32
PIXEL_MM = 400.0 / SIZE
WINDOW = {"level": 40.0, "width": 400.0}
PANCREAS_X = 0.2  # windowed value painted into the pancreas: 40 + 0.2 * 200 = 80 HU


def toy_ct(n: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` toy slices (N, 1, S, S) float32 in [-1, 1] and their pancreas masks (uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    imgs = np.empty((n, 1, size, size), np.float32)
    masks = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        cy, cx = 0.5 + rng.normal(0, 0.03, 2)
        img = np.full((size, size), -1.0)
        img[((xx - cx) / 0.42) ** 2 + ((yy - cy) / 0.3) ** 2 <= 1] = -0.1  # body
        img[((xx - cx + 0.2) / 0.15) ** 2 + ((yy - cy + 0.05) / 0.12) ** 2 <= 1] = 0.3  # liver
        img[(xx - cx) ** 2 + (yy - cy - 0.2) ** 2 <= 0.06**2] = 0.9  # spine, posterior
        a, b = rng.uniform(0.06, 0.1), rng.uniform(0.03, 0.05)
        pancreas = ((xx - cx - 0.08) / a) ** 2 + ((yy - cy - 0.02) / b) ** 2 <= 1
        img[pancreas] = PANCREAS_X
        masks[i, 0] = pancreas
        imgs[i, 0] = np.clip(img + rng.normal(0, 0.05, img.shape), -1, 1)
    return imgs, masks


def write_slices(folder, splits: dict, source: dict | None = None, size: int = SIZE) -> None:
    """A slices folder in the real format (``pipeline.cohort.write_slices._index``) from arrays."""
    entries, cases = {}, {}
    for split, (img, msk) in splits.items():
        writer = ShardWriter(folder / split, 16, prefix=f"{split}/")
        cid = f"CASE_{split}" if source is None else f"syn-{source['model']}"
        writer.add(img, msk, cid, np.arange(len(img)))
        pos = int(msk.reshape(len(msk), -1).any(1).sum())
        entries[split] = {
            "cases": [cid],
            "shards": writer.close(),
            "slices": len(img),
            "positive": pos,
            "negative": len(img) - pos,
        }
        cases[cid] = {"split": split, "n_slices": len(img), "positive": pos, "negative": 0}
    index = {
        "format": FORMAT,
        "size": size,
        "pixel_mm": 400.0 / size,
        "fov_mm": 400.0,
        "window": WINDOW,
        "negative_fraction": 0.0,
        "seed": 0,
        "shard_size": 16,
        "axes": {},
        "split_source": "explicit",
        "splits": entries,
        "cases": cases,
        "skipped": [],
    }
    if source is not None:
        index["source"] = source
    (folder / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def toy_net():
    x, _ = toy_ct(48, seed=0)
    return train_feature_net(
        x, steps=200, batch_size=32, lr=3e-3, seed=0, channels=(8, 16, 32), feature_dim=16
    )


# ----------------------------------------------------------------------------- anatomy
def test_hu_back_transform_is_exact_inverse_of_window():
    hu = np.array([-160.0, -37.5, 40.0, 102.6, 240.0])
    x = window_hu(hu, WINDOW["level"], WINDOW["width"])
    np.testing.assert_allclose(Q.window_to_hu(x, **WINDOW), hu, atol=1e-4)
    np.testing.assert_array_equal(
        Q.window_to_hu([-1.0, 0.0, 0.5, 1.0], 40, 400), [-160, 40, 140, 240]
    )


def test_mask_area_and_components_are_known_answers():
    masks = np.zeros((4, 1, 16, 16), np.uint8)
    masks[0, 0, 2:5, 3:8] = 1  # 15 pixels, one blob
    masks[1, 0, 1:3, 1:3] = 1
    masks[1, 0, 10:12, 10:14] = 1  # two blobs, 4 + 8 pixels
    masks[2, 0, 5, 5] = masks[2, 0, 6, 6] = 1  # corner-touching: one blob under 8-connectivity
    np.testing.assert_allclose(Q.mask_areas_mm2(masks, 0.5), [15 * 0.25, 12 * 0.25, 2 * 0.25, 0])
    np.testing.assert_array_equal(Q.component_counts(masks), [1, 2, 1, 0])
    a = Q.anatomy_metrics(np.zeros(masks.shape, np.float32), masks, 40.0, 400.0, 0.5)
    assert a["share_empty"] == 0.25
    assert a["components_mean"] == pytest.approx(4 / 3)
    assert a["share_multi_component"] == pytest.approx(1 / 3)
    assert a["area_mm2_median"] == pytest.approx(12 * 0.25)  # over the 3 non-empty masks
    assert a["hu_mean"] == pytest.approx(40.0) and a["hu_sd"] == pytest.approx(0.0)


def test_anatomy_of_toy_slices_reads_the_painted_pancreas():
    img, msk = toy_ct(24, seed=3)
    a = Q.anatomy_metrics(img, msk, WINDOW["level"], WINDOW["width"], PIXEL_MM)
    assert a["hu_mean"] == pytest.approx(80.0, abs=2.0)
    assert a["hu_sd"] == pytest.approx(0.05 * 200, rel=0.2)  # the added noise, in HU
    assert a["share_empty"] == 0.0 and a["components_median"] == 1.0
    empty = Q.anatomy_metrics(img, np.zeros_like(msk), 40.0, 400.0, PIXEL_MM)
    assert math.isnan(empty["hu_mean"]) and empty["share_empty"] == 1.0
    assert Q.area_distance_mm2(msk, msk, PIXEL_MM) == 0.0
    grown = np.pad(msk[:, :, 1:, :], ((0, 0), (0, 0), (0, 1), (0, 0))) | msk  # one row taller
    assert Q.area_distance_mm2(grown, msk, PIXEL_MM) > 0


# ----------------------------------------------------------------------------- feature net
def test_dihedral_gives_eight_distinct_transforms():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_feature_net_beats_chance_on_pretext_task(toy_net):
    held_out, _ = toy_ct(24, seed=1)
    acc = pretext_accuracy(toy_net, held_out)
    assert acc["accuracy"] > 0.35  # chance 0.125
    assert acc["rotation"] > 0.6  # chance 0.25
    f = features(toy_net, held_out)
    assert f.shape == (24, 16) and torch.isfinite(f).all()
    # Global average pooling: the same network takes 64-px slices.
    assert features(toy_net, toy_ct(2, size=64)[0]).shape == (2, 16)


def test_feature_net_save_load_and_bare_state_dict(tmp_path, toy_net):
    x, _ = toy_ct(4, seed=5)
    save_feature_net(tmp_path / "net.pt", toy_net, {"size": SIZE})
    back = load_feature_net(tmp_path / "net.pt")
    assert back.trained_size == SIZE
    torch.testing.assert_close(features(back, x), features(toy_net, x))
    torch.save(toy_net.state_dict(), tmp_path / "bare.pt")
    bare = load_feature_net(tmp_path / "bare.pt", channels=(8, 16, 32), feature_dim=16)
    torch.testing.assert_close(features(bare, x), features(toy_net, x))
    with pytest.raises(ValueError, match="bare.pt.*do not fit"):
        load_feature_net(tmp_path / "bare.pt", channels=(8, 16, 64), feature_dim=16)
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="junk.pt"):
        load_feature_net(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="too small"):
        features(CtFeatureNet((4, 4, 4, 4, 4, 4), 4), x)


# ----------------------------------------------------------------------------- sample metrics
# scipy's sqrtm warns on the collapsed set's zero covariance; the FID stays finite.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_metrics_near_zero_for_real_vs_real_and_grow_for_shifted_or_noisy(toy_net):
    real, _ = toy_ct(40, seed=10)
    same, _ = toy_ct(40, seed=11)
    noisy = np.clip(same + np.random.default_rng(0).normal(0, 0.3, same.shape), -1, 1)
    shifted = np.roll(same, 6, axis=2)  # anatomy moved 6 rows posterior
    fr = features(toy_net, real)
    kw = {"ms_ssim_pairs": 20, "pr_k": 3, "bandwidth": None, "seed": 0}
    m_same = Q.sample_metrics(real, same, fr, features(toy_net, same), **kw)
    for bad in (noisy.astype(np.float32), shifted):
        m_bad = Q.sample_metrics(real, bad, fr, features(toy_net, bad), **kw)
        assert m_bad["mmd"] > 10 * abs(m_same["mmd"])
        assert m_bad["fid"] > 5 * m_same["fid"]
        assert m_bad["precision"] < m_same["precision"]
        # Same bandwidth and same real pairs for every compared set.
        assert m_bad["mmd_bandwidth"] == m_same["mmd_bandwidth"]
        assert m_bad["ms_ssim_real"] == m_same["ms_ssim_real"]
    m_self = Q.sample_metrics(real, real, fr, fr, **kw)
    # The unbiased MMD^2 drops the i == j terms, so a set against itself reads slightly < 0.
    assert -0.05 < m_self["mmd"] <= 0 and m_self["fid"] == pytest.approx(0.0, abs=1e-6)
    assert m_self["precision"] == m_self["recall"] == 1.0
    # A collapsed set (one slice repeated) has MS-SSIM 1: no diversity.
    collapsed = np.repeat(same[:1], 40, axis=0)
    m_col = Q.sample_metrics(real, collapsed, fr, features(toy_net, collapsed), **kw)
    assert m_col["ms_ssim_other"] == pytest.approx(1.0)
    assert m_same["ms_ssim_other"] < 0.95
    assert m_col["fid"] > 5 * m_same["fid"]


def test_quality_table_orders_rows_and_leaves_missing_cells_empty():
    evals = {
        "vae": {"reference": 0.0, "fid": 12.5, "hu_mean": float("nan"), "real_hu_mean": 90.0},
        "real": {"reference": 1.0, "fid": 1.25, "ms_ssim_real": 0.4, "real_hu_mean": 90.0},
    }
    rows = Q.table_rows(evals)
    assert list(rows) == [Q.TARGET_ROW, Q.REFERENCE_ROW, "vae"]
    assert rows[Q.TARGET_ROW]["hu_mean"] == 90.0
    md = Q.quality_table(rows)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("| set | MMD")
    vae_cells = [c.strip() for c in lines[4].split("|")[1:-1]]
    assert vae_cells[0] == "vae" and vae_cells[2] == "12.50" and vae_cells[6] == ""
    csv_lines = Q.quality_csv(rows).splitlines()
    assert csv_lines[0].startswith("set,mmd_x1e4,fid") and csv_lines[2].split(",")[2] == "1.25"


# ----------------------------------------------------------------------------- stages
QP = QualityParams(
    n_samples=40, ms_ssim_pairs=20, batch_size=16, grid=4,
    memorization=MemorizationParams(quantile=0.05, downsample=2),
)  # fmt: skip
FP = CtFeatureParams(steps=30, batch_size=16, channels=(8, 16), feature_dim=8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctq")
    splits = {"train": toy_ct(40, 20), "val": toy_ct(10, 21), "test": toy_ct(30, 22)}
    write_slices(root / "slices", splits)
    syn_img, syn_msk = toy_ct(30, 23)
    syn_img[:3], syn_msk[:3] = splits["train"][0][5:8], splits["train"][1][5:8]  # 3 copies
    syn_msk[3] = 0  # one empty generated mask
    write_slices(root / "syn", {"synthetic": (syn_img, syn_msk)}, {"model": "toy"})
    return root


def test_stages_end_to_end(folders, tmp_path, monkeypatch, capsys):
    from pipeline.augment.quality import evaluate as ct_quality
    from pipeline.augment.quality import report as ct_quality_report
    from pipeline.augment.quality import train_features as ct_features
    from pipeline.stages import ct_quality as ct_quality_stage

    summary = ct_features.run(FP, folders / "slices", tmp_path / "feat")
    assert summary["heldout_split"] == "val" and summary["n_heldout"] == 10
    assert 0 <= summary["pretext_accuracy"] <= 1
    assert json.loads((tmp_path / "feat/summary.json").read_text()) == summary

    evals = tmp_path / "evals"
    m = ct_quality.run(QP, folders / "slices", tmp_path / "feat", evals / "toy", folders / "syn")
    for name in ("metrics.json", "memorization.json", "grid.png"):
        assert (evals / "toy" / name).is_file()
    on_disk = json.loads((evals / "toy/metrics.json").read_text())
    assert all(v is None or isinstance(v, float) for v in on_disk.values())
    assert on_disk["share_empty"] == pytest.approx(1 / 30)
    assert on_disk["real_hu_mean"] == pytest.approx(80.0, abs=2.0)
    headline = json.loads((evals / "toy/headline.json").read_text())  # dvc exp show's columns
    assert headline == {k: on_disk[k] for k in ("fid", "mmd_x1e4")}
    mem = json.loads((evals / "toy/memorization.json").read_text())
    assert [s["near_copy"] for s in mem["samples"][:3]] == [True] * 3
    assert [s["nn_train_slice"] for s in mem["samples"][:3]] == [5, 6, 7]
    assert mem["samples"][0]["distance"] == 0.0 and m["near_copy_share"] >= 3 / 30

    ref = ct_quality.run(QP, folders / "slices", tmp_path / "feat", evals / "real")
    assert ref["reference"] == 1.0 and ref["n_samples"] == 40.0
    # Real test slices scored against the threshold made from themselves: ~ the quantile.
    assert ref["near_copy_share"] <= 0.1

    # CLI path (sections registered here in case the config does not list them yet).
    from pipeline.params import loader as config

    monkeypatch.setitem(config.SECTIONS, "ct_quality", QualityParams)
    params = tmp_path / "params.yaml"
    params.write_text("ct_quality: {n_samples: 40, ms_ssim_pairs: 20, grid: 2}\n")
    args = argparse.Namespace(
        params=str(params), slices=str(folders / "slices"), features=str(tmp_path / "feat"),
        synthetic=str(folders / "syn"), reference=False, out=str(evals / "toy2"),
    )  # fmt: skip
    assert ct_quality_stage.main(args) == 0 and "near-copies" in capsys.readouterr().out

    rows = ct_quality_report.run(evals, tmp_path / "report", order=["toy2", "toy"])
    assert list(rows) == [Q.TARGET_ROW, Q.REFERENCE_ROW, "toy2", "toy"]
    table = (tmp_path / "report/table.md").read_text()
    assert "real train (floor)" in table and (tmp_path / "report/table.csv").is_file()


def test_near_copies_per_training_fraction(folders, tmp_path, capsys):
    # Each fraction's generator set is checked against the train split with the f1.0 set's
    # threshold; copies planted in the low-data set are found there and only there.
    from pipeline.augment.quality import evaluate as ct_quality
    from pipeline.augment.quality import report as ct_quality_report
    from pipeline.augment.quality import train_features as ct_features

    ct_features.run(FP, folders / "slices", tmp_path / "feat")
    train_img, train_msk = load_slices(folders / "slices", "train")[:2]
    root = tmp_path / "syn"
    clean = toy_ct(30, 40)
    small_img, small_msk = toy_ct(30, 41)
    small_img[4:6], small_msk[4:6] = train_img[[11, 17]], train_msk[[11, 17]]
    source = {"model": "toy", "trained_on": ["CASE_train"]}
    write_slices(root / "f1.0", {"synthetic": clean}, {**source, "fraction": 1.0})
    write_slices(root / "f0.25", {"synthetic": (small_img, small_msk)}, source)
    (root / "grid.png").write_bytes(b"")  # other files of the generate folder are ignored
    assert list(ct_quality.fraction_sets(root)) == ["f1.0", "f0.25"]

    out = tmp_path / "evals" / "toy"
    m = ct_quality.run(QP, folders / "slices", tmp_path / "feat", out, root / "f1.0", root)
    mem = json.loads((out / "memorization.json").read_text())
    by_set = {r["set"]: r for r in mem["fractions"]}
    assert [r["set"] for r in mem["fractions"]] == ["f1.0", "f0.25"]
    small = by_set["f0.25"]
    assert {(f["slice_index"], f["nn_train_slice"]) for f in small["flagged"]} >= {
        (4, 11),
        (5, 17),
    }
    assert small["n"] == 30 and small["trained_on"] == ["CASE_train"]
    assert m["near_copy_share_f0.25"] == small["share"] >= 2 / 30
    assert m["near_copy_share_f1.0"] == by_set["f1.0"]["share"] == m["near_copy_share"]
    # Toy slices look alike, so some clean ones pass both tests by chance; no exact copy does.
    exact = [f["slice_index"] for f in small["flagged"] if f["distance"] == 0.0]
    assert exact == [4, 5] and all(f["distance"] > 0 for f in by_set["f1.0"]["flagged"])
    # Each fraction set's distribution metrics against the same test slices: the stage's own
    # set (f1.0) is the one in metrics.json, the other measured alike and not the same.
    quality = json.loads((out / "by_fraction.json").read_text())
    assert list(quality) == ["f1.0", "f0.25"]
    assert quality["f1.0"]["fid"] == m["fid"] and quality["f1.0"]["recall"] == m["recall"]
    assert quality["f0.25"]["n_samples"] == 30 and quality["f0.25"]["fid"] != m["fid"]
    half = ct_quality._subset(30, QP.n_samples, QP.seed + 1)
    test = load_slices(folders / "slices", "test")
    ti = ct_quality._subset(len(test[0]), QP.n_samples, QP.seed)
    net = load_feature_net(tmp_path / "feat" / NET_NAME)
    again = ct_quality._set_metrics(
        QP, net, (test[0][ti], test[1][ti], test[2]), (small_img[half], small_msk[half]), False
    )
    assert quality["f0.25"]["fid"] == pytest.approx(again["fid"])

    ct_quality.run(QP, folders / "slices", tmp_path / "feat", tmp_path / "evals" / "real")
    ct_quality_report.run(tmp_path / "evals", tmp_path / "report")
    table = (tmp_path / "report/near_copies.md").read_text().splitlines()
    assert table[0] == "| set | threshold | near-copies f1.0 | near-copies f0.25 |"
    assert len(table) == 3 and table[2].startswith("| toy |")  # the real floor has no row
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert float(cells[3]) == pytest.approx(small["share"], abs=5e-4)
    # The CSV beside it (a download in the HTML report) has the raw values.
    with open(tmp_path / "report/near_copies.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["set"] == "toy" and float(row["near_copy_share_f0.25"]) == small["share"]
    assert float(row["near_copy_threshold"]) == m["near_copy_threshold"]

    # A set from patients outside the train split, or no fraction set at all: named errors.
    write_slices(root / "f0.1", {"synthetic": clean}, {"model": "toy", "trained_on": ["X"]})
    with pytest.raises(ValueError, match=r"f0.1/index.json: the generator was trained on 1 case"):
        ct_quality.run(
            QP, folders / "slices", tmp_path / "feat", tmp_path / "o", root / "f1.0", root
        )
    with pytest.raises(ValueError, match=r"no f<fraction>/index.json"):
        ct_quality.run(
            QP, folders / "slices", tmp_path / "feat", tmp_path / "o", root / "f1.0", tmp_path
        )
    assert not (tmp_path / "o").exists()


def test_quality_refuses_mismatched_synthetic_grid(folders, tmp_path):
    from pipeline.augment.quality import evaluate as ct_quality
    from pipeline.augment.quality import train_features as ct_features

    ct_features.run(FP, folders / "slices", tmp_path / "feat")
    img, msk = toy_ct(12, 30, size=16)
    write_slices(tmp_path / "syn16", {"synthetic": (img, msk)}, {"model": "x"}, size=16)
    with pytest.raises(ValueError, match=r"syn16/index.json: size 16"):
        ct_quality.run(
            QP, folders / "slices", tmp_path / "feat", tmp_path / "out", tmp_path / "syn16"
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no split 'synthetic'"):
        ct_quality.run(
            QP, folders / "slices", tmp_path / "feat", tmp_path / "out", folders / "slices"
        )
    assert load_slices(folders / "syn", "synthetic")[0].shape == (30, 1, SIZE, SIZE)


def test_ct_features_cli_uses_local_weights_instead_of_training(folders, tmp_path, monkeypatch):
    from pipeline.errors import StageError
    from pipeline.params import loader as config
    from pipeline.stages import ct_features as ct_features_stage

    monkeypatch.setitem(config.SECTIONS, "ct_features", CtFeatureParams)
    params = tmp_path / "params.yaml"
    params.write_text("ct_features: {channels: [8, 16], feature_dim: 8}\n")
    torch.manual_seed(0)
    torch.save(CtFeatureNet((8, 16), 8).state_dict(), tmp_path / "bare.pt")
    args = argparse.Namespace(
        params=str(params), slices=str(folders / "slices"), out=str(tmp_path / "feat"),
        weights=str(tmp_path / "bare.pt"),
    )  # fmt: skip
    assert ct_features_stage.main(args) == 0
    summary = json.loads((tmp_path / "feat/summary.json").read_text())
    assert summary["source"] == "weights: bare.pt"
    saved = load_feature_net(tmp_path / "feat/feature_net.pt").state_dict()
    bare = torch.load(tmp_path / "bare.pt", weights_only=True)
    assert all(torch.equal(saved[k], bare[k]) for k in bare)  # loaded, not trained
    params.write_text("ct_features: {channels: [8, 32], feature_dim: 8}\n")
    with pytest.raises(StageError, match="bare.pt: weights do not fit"):
        ct_features_stage.main(args)
