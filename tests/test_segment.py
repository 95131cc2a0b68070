"""Segmentation experiment: metrics, augmentation, subsets, leakage guard, tiny grid, resume.

Slices folders are tiny fakes in the real shard format (16 px, a bright square labelled as
pancreas); the networks train for a handful of steps on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from common.atomic import write_json
from pipeline.augment.segment.experiment import (
    check_leakage,
    parse_synthetic_args,
    synthetic_folder,
    training_subset,
)
from pipeline.augment.segment.grid import run_experiment
from pipeline.augment.segment.train import (
    augment_batch,
    classical_augmentation,
    evaluate_patients,
    patient_dice,
    patient_hd95,
    predict,
    train_segmenter,
)
from pipeline.errors import StageError
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter
from pipeline.params.segment import Condition, SegmentParams, expand_conditions, parse_condition
from pipeline.stages import segment as stage

SIZE = 16
TRAIN = ["P01", "P02", "P03", "P04"]
SPLITS = {"train": TRAIN, "val": ["P05"], "test": ["P06", "P07"]}
TINY = {
    "conditions": ("real", "real+syn"),
    "models": ("gvae",),
    "fractions": (1.0, 0.5),
    "min_patients": 1,
    "seeds": (0,),
    "steps": 5,
    "batch_size": 4,
    "unet": {"channels": (4, 8), "strides": (2,), "num_res_units": 0},
    "threads": 1,
    "device": "cpu",
    "n_boot": 200,
}


def fake_slices(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` slices: dark noise, a bright 4x4 'pancreas' at a random place (its mask)."""
    image = rng.uniform(-1.0, -0.6, (n, 1, SIZE, SIZE)).astype(np.float32)
    mask = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    for i in range(n):
        r, c = rng.integers(2, SIZE - 6, size=2)
        mask[i, 0, r : r + 4, c : c + 4] = 1
    image[mask == 1] = 0.6
    return image, mask


def write_folder(root, splits, per_case=3, pixel_mm=2.0, source=None, size=SIZE, seed=0):
    """Write a slices folder (shards + index.json) in the format of ``gvae slices``."""
    rng = np.random.default_rng(seed)
    entries, cases = {}, {}
    for split, ids in splits.items():
        writer = ShardWriter(root / split, shard_size=8, prefix=f"{split}/")
        for cid in ids:
            image, mask = fake_slices(per_case, rng)
            if size != SIZE:
                image, mask = image[..., :size, :size], mask[..., :size, :size]
            writer.add(image, mask, cid, np.arange(per_case))
            cases[cid] = {"split": split, "n_slices": per_case, "positive": per_case}
        n = per_case * len(ids)
        entries[split] = {"cases": ids, "shards": writer.close(), "slices": n, "positive": n,
                          "negative": 0}  # fmt: skip
    index = {"format": FORMAT, "size": size, "pixel_mm": pixel_mm, "fov_mm": pixel_mm * size,
             "window": {"level": 40, "width": 400}, "axes": {}, "splits": entries,
             "cases": cases, "skipped": []}  # fmt: skip
    if source is not None:
        index["source"] = source
    write_json(root / INDEX_NAME, index)
    return root


@pytest.fixture()
def folders(tmp_path):
    real = write_folder(tmp_path / "slices", SPLITS)
    syn = write_folder(
        tmp_path / "syn",
        {"synthetic": ["syn-gvae"]},
        per_case=10,
        source={"model": "gvae", "trained_on": TRAIN},
        seed=1,
    )
    return real, syn


# ----------------------------------------------------------------------------- metrics
def _square(k=0):
    m = np.zeros((1, 1, 32, 32), np.uint8)
    m[0, 0, 10:20, 8 + k : 18 + k] = 1
    return m


def test_dice_known_answers():
    gt = np.concatenate([_square(), _square(3)])
    assert patient_dice(gt, gt) == 1.0
    assert patient_dice(np.zeros_like(gt), gt) == 0.0
    empty = np.zeros_like(gt)
    assert patient_dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert patient_dice(gt, empty) == 0.0  # false positives on a pancreas-free patient
    # Pooled over slices, not averaged: slice 1 perfect (100 px), slice 2 missed (100 px)
    # -> 2 * 100 / (100 + 200) = 2/3, where a per-slice mean would give 1/2.
    pred = gt.copy()
    pred[1] = 0
    assert patient_dice(pred, gt) == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_of_a_shift_is_k_pixels(k):
    gt = _square()
    assert patient_hd95(gt, gt, 0.8) == 0.0
    assert patient_hd95(_square(k), gt, 0.8) == pytest.approx(k * 0.8)


def test_hd95_averages_slices_where_both_masks_exist():
    gt = np.concatenate([_square(), _square(), _square()])
    pred = np.concatenate([_square(1), _square(3), np.zeros_like(_square())])
    # Third slice has no prediction: no distance; mean of 1 and 3 pixels of 2 mm.
    assert patient_hd95(pred, gt, 2.0) == pytest.approx(4.0)
    assert math.isnan(patient_hd95(np.zeros_like(gt), gt, 2.0))


def test_evaluate_patients_groups_by_case():
    gt = np.concatenate([_square(), _square(), _square()])
    pred = np.concatenate([_square(), _square(), np.zeros_like(_square())])
    out = evaluate_patients(pred, gt, np.array(["B", "A", "B"]), 1.0)
    assert list(out) == ["A", "B"]
    assert out["A"]["dice"] == 1.0 and out["A"]["slices"] == 1
    assert out["B"]["dice"] == pytest.approx(2 / 3) and out["B"]["slices"] == 2


# ----------------------------------------------------------------------------- training
def test_augmentation_keeps_masks_binary_and_is_seeded():
    rng = np.random.default_rng(0)
    image, mask = fake_slices(6, rng)
    before = image.copy(), mask.copy()
    params = SegmentParams(augment={"prob": 1.0, "rotate_deg": 30})
    a_img, a_msk = augment_batch(
        classical_augmentation(params.augment, 3), image, mask, np.ones(6, bool)
    )
    b_img, _ = augment_batch(
        classical_augmentation(params.augment, 3), image, mask, np.ones(6, bool)
    )
    assert set(torch.unique(a_msk).tolist()) <= {0.0, 1.0}
    assert float(a_img.min()) >= -1 and float(a_img.max()) <= 1
    assert torch.equal(a_img, b_img)  # same seed, same draws
    assert not torch.equal(a_img, torch.from_numpy(image))  # it did something
    np.testing.assert_array_equal(image, before[0])  # inputs untouched
    np.testing.assert_array_equal(mask, before[1])
    off_img, off_msk = augment_batch(
        classical_augmentation(params.augment, 3), image, mask, np.zeros(6, bool)
    )
    np.testing.assert_array_equal(off_img.numpy(), image)
    np.testing.assert_array_equal(off_msk.numpy(), mask)


def test_training_is_reproducible_for_a_seed():
    image, mask = fake_slices(8, np.random.default_rng(0))
    params = SegmentParams(**TINY)
    flags = np.ones(8, bool)
    runs = [train_segmenter(image, mask, flags, params, seed) for seed in (0, 0, 1)]
    w = [torch.cat([p.flatten() for p in r.model.parameters()]) for r in runs]
    assert torch.equal(w[0], w[1])
    assert not torch.equal(w[0], w[2])
    pred = predict(runs[0].model, image)
    assert pred.shape == mask.shape and pred.dtype == np.uint8


# ----------------------------------------------------------------------------- subsets
def test_training_subset_nested_deterministic_sorted():
    cases = [f"P{i:02d}" for i in range(20)]
    subsets = [training_subset(cases[::-1], f, 7, 2) for f in (1.0, 0.5, 0.25, 0.1, 0.01)]
    assert subsets[0] == cases
    assert [len(s) for s in subsets] == [20, 10, 5, 2, 2]  # min_patients holds the floor
    for big, small in zip(subsets, subsets[1:], strict=False):
        assert set(small) <= set(big)
    assert all(s == sorted(s) for s in subsets)
    assert training_subset(cases, 0.25, 7, 2) == subsets[2]
    assert training_subset(cases, 0.25, 8, 2) != subsets[2]


def test_training_subset_errors_name_the_setting():
    with pytest.raises(ValueError, match="segment.fractions"):
        training_subset(["A", "B"], 0.0, 0, 1)
    with pytest.raises(ValueError, match="0 patients"):
        training_subset(["A", "B", "C"], 0.1, 0, 0)
    with pytest.raises(ValueError, match="min_patients"):
        training_subset(["A"], 1.0, 0, 2)
    with pytest.raises(ValueError, match="no patient"):
        training_subset([], 1.0, 0, 1)


# ----------------------------------------------------------------------------- leakage
def test_leakage_guard_raises_naming_the_patient():
    check_leakage(["P01", "syn-gvae"], {"test": ["P06"], "val": ["P05"]})
    with pytest.raises(ValueError, match=r"test patient\(s\) \['P06'\]"):
        check_leakage(["P01", "P06"], {"test": ["P06"], "val": ["P05"]})


def test_a_test_patient_in_the_train_split_stops_the_grid(tmp_path):
    real = write_folder(tmp_path / "slices", {**SPLITS, "train": [*TRAIN, "P06"]})
    params = SegmentParams(**{**TINY, "conditions": ("real",)})
    with pytest.raises(ValueError, match="leakage.*P06"):
        run_experiment(params, real, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out" / "runs").exists()


def test_synthetic_source_naming_a_test_patient_is_refused(tmp_path, folders):
    real, _ = folders
    syn = write_folder(
        tmp_path / "bad", {"synthetic": ["syn-gvae"]}, source={"trained_on": ["P01", "P07"]}
    )
    params = SegmentParams(**TINY)
    with pytest.raises(ValueError, match="P07"):
        run_experiment(params, real, tmp_path / "out", {("gvae", None): syn}, log=print)
    bad_ids = write_folder(tmp_path / "ids", {"synthetic": ["P01"]})
    with pytest.raises(ValueError, match="syn-"):
        run_experiment(params, real, tmp_path / "out", {("gvae", None): bad_ids}, log=print)


# ----------------------------------------------------------------------------- the grid
def test_tiny_grid_writes_everything_and_resumes(tmp_path, folders):
    real, syn = folders
    out = tmp_path / "out"
    params = SegmentParams(**TINY)
    lines: list[str] = []
    summary = run_experiment(params, real, out, {("gvae", None): syn}, log=lines.append)
    assert (summary["runs"], summary["executed"]) == (4, 4)
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == [
        "real+syn-gvae__f0.5__s0.json", "real+syn-gvae__f1.0__s0.json",
        "real__f0.5__s0.json", "real__f1.0__s0.json",
    ]  # fmt: skip
    for name in ("metrics.json", "results.csv", "table.md", "dice_vs_size.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "dice_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    # One line per run, and a warning: the model-wide generator saw patients outside the
    # f=0.5 subset.
    assert sum("Dice" in line for line in lines) == 4
    assert any("warning" in line and "f=0.5" in line for line in lines)

    for path in (out / "runs").iterdir():
        record = json.loads(path.read_text())
        # The training cases actually used are train-split patients, never val/test.
        assert set(record["train_patients"]) <= set(TRAIN)
        assert sorted(record["patients"]) == SPLITS["test"]
        expected = 4 if record["fraction"] == 1.0 else 2
        assert len(record["train_patients"]) == record["n_train_patients"] == expected
        assert record["n_real"] == 3 * expected
        assert record["n_synthetic"] == (record["n_real"] if "syn" in record["condition"] else 0)
        assert all(0 <= p["dice"] <= 1 for p in record["patients"].values())

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"f1.0", "f0.5"}
    assert set(metrics["f1.0"]) == {"real", "real+syn:gvae"}
    assert metrics["f1.0"]["real"]["diff_vs_real"] == 0.0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["n_patients"] for r in rows} == {"2"}
    assert "real+syn:gvae" in (out / "table.md").read_text()

    again = run_experiment(params, real, out, {("gvae", None): syn}, resume=True, log=print)
    assert again["executed"] == 0
    assert again["rows"] == summary["rows"]
    more = SegmentParams(**{**TINY, "seeds": (0, 1)})
    grown = run_experiment(more, real, out, {("gvae", None): syn}, resume=True, log=print)
    assert (grown["runs"], grown["executed"]) == (8, 4)  # only the new seed ran
    changed = SegmentParams(**{**TINY, "steps": 6})
    assert (
        run_experiment(changed, real, out, {("gvae", None): syn}, resume=True)["executed"] == 4
    )  # a different setting invalidates the old runs


def test_differences_are_paired_against_real_and_against_classical(tmp_path):
    """Each row carries Dice - real and Dice - real+classical, both paired per patient over the
    seed-averaged Dice; a fraction without real+classical gets n/a, not a number."""
    from pipeline.augment.segment.results import aggregate, table_markdown, write_results

    cases = ["P1", "P2", "P3", "P4"]

    def rec(cond, frac, seed, dice):
        patients = {c: {"dice": d, "hd95": 5.0} for c, d in zip(cases, dice, strict=True)}
        return {"condition": cond, "fraction": frac, "seed": seed, "n_train_patients": 4,
                "n_real": 12, "n_synthetic": 0, "patients": patients, "seconds": 1.0}  # fmt: skip

    real = [0.5, 0.6, 0.7, 0.8]
    classical = [0.6, 0.6, 0.8, 0.9]
    syn = {0: [0.5, 0.7, 0.7, 0.8], 1: [0.6, 0.7, 0.8, 0.9]}  # per-patient mean 0.55, .7, .75, .85
    records = [rec("real", 1.0, 0, real), rec("real+classical", 1.0, 0, classical)]
    records += [rec("real+classical+syn:gvae", 1.0, s, d) for s, d in syn.items()]
    records += [rec("real", 0.5, 0, real), rec("real+syn:gvae", 0.5, 0, classical)]
    params = SegmentParams(**TINY)
    rows = {(r["condition"], r["fraction"]): r for r in aggregate(records, params)}
    mixed = rows[("real+classical+syn:gvae", 1.0)]
    mean_syn = np.mean(list(syn.values()), axis=0)
    assert mixed["diff_vs_real"] == pytest.approx(np.mean(mean_syn - real))  # +0.0625
    assert mixed["diff_vs_classical"] == pytest.approx(np.mean(mean_syn - classical))  # -0.0125
    assert mixed["diff_classical_lo"] <= mixed["diff_vs_classical"] <= mixed["diff_classical_hi"]
    assert rows[("real+classical", 1.0)]["diff_vs_classical"] == 0.0
    assert rows[("real", 1.0)]["diff_vs_classical"] == pytest.approx(-0.075)
    assert math.isnan(rows[("real+syn:gvae", 0.5)]["diff_vs_classical"])  # no classical at f0.5
    assert rows[("real+syn:gvae", 0.5)]["diff_vs_real"] == pytest.approx(0.075)

    table = table_markdown(list(rows.values()), params).splitlines()
    assert "| Dice - real+classical [95% CI] |" in table[2]
    f05 = next(line for line in table if line.startswith("| real+syn:gvae | 0.5 |"))
    assert f05.split("|")[9].strip() == "n/a [n/a, n/a]"
    write_results(records, params, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["f1.0"]["real+classical+syn:gvae"]["diff_vs_classical"] == pytest.approx(-0.0125)
    assert metrics["f0.5"]["real+syn:gvae"]["diff_vs_classical"] is None  # strict JSON, no NaN
    (row,) = [r for r in csv.DictReader((tmp_path / "results.csv").open()) if r["fraction"] == "0.5"
              and r["condition"] == "real+syn:gvae"]  # fmt: skip
    assert row["diff_vs_classical"] == ""


def test_worker_processes_write_what_a_serial_grid_writes(tmp_path, folders):
    """segment.workers spreads the runs over processes; each run is seeded, so every run JSON
    (its time aside) and every table row equal the serial grid's."""
    real, syn = folders
    synthetic = {("gvae", None): syn}
    serial = run_experiment(SegmentParams(**TINY), real, tmp_path / "serial", synthetic, log=print)
    two = SegmentParams(**{**TINY, "workers": 2})
    par = run_experiment(two, real, tmp_path / "par", synthetic, log=print)
    assert (par["runs"], par["executed"], par["missing"]) == (4, 4, 0)
    untimed = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in x["rows"]] for x in (par, serial)
    ]
    assert untimed[0] == untimed[1]
    names = sorted(p.name for p in (tmp_path / "serial" / "runs").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "par" / "runs").iterdir())
    for name in names:
        a, b = (json.loads((tmp_path / d / "runs" / name).read_text()) for d in ("serial", "par"))
        for record in (a, b):
            del record["seconds"], record["train_seconds"]
        assert a == b
    # The worker count is not a setting of the runs: a serial resume keeps all four.
    again = run_experiment(SegmentParams(**TINY), real, tmp_path / "par", synthetic, resume=True)
    assert again["executed"] == 0


def test_stage_cli_with_per_fraction_folders(tmp_path, folders, capsys):
    real, syn = folders
    params_file = tmp_path / "params.yaml"
    seg = {**TINY, "conditions": ["real+syn"], "fractions": [0.5], "unet": {
        "channels": [4, 8], "strides": [2], "num_res_units": 0}}  # fmt: skip
    params_file.write_text(
        yaml.safe_dump(
            {"segment": {k: list(v) if isinstance(v, tuple) else v for k, v in seg.items()}}
        )
    )
    args = argparse.Namespace(
        params=str(params_file),
        slices=real,
        out=tmp_path / "out",
        synthetic=[f"gvae@0.5={syn}"],
        synthetic_root=None,
        resume=False,
    )
    assert stage.main(args) == 0
    assert "1 runs (1 executed, 0 missing)" in capsys.readouterr().out
    # A folder for another fraction only: the 0.5 runs have none -> error naming the model.
    args.synthetic = [f"gvae@1.0={syn}"]
    args.out = tmp_path / "out2"
    with pytest.raises(StageError, match="model 'gvae' at fraction 0.5"):
        stage.main(args)
    assert not (tmp_path / "out2").exists()
    # The layout of `gvae generate --each-fraction`: ROOT/<model>/f<fraction>.
    (tmp_path / "root" / "gvae").mkdir(parents=True)
    syn.rename(tmp_path / "root" / "gvae" / "f0.5")
    args.synthetic, args.synthetic_root = [], tmp_path / "root"
    assert stage.main(args) == 0
    record = json.loads((args.out / "runs" / "real+syn-gvae__f0.5__s0.json").read_text())
    assert record["synthetic_folder"].endswith("f0.5")


# ----------------------------------------------------------------------------- bad input
def test_bad_conditions_and_fractions_are_named():
    with pytest.raises(ValidationError, match=r"unknown condition 'real\+gan'"):
        SegmentParams(conditions=("real", "real+gan"))
    with pytest.raises(ValidationError, match="fractions"):
        SegmentParams(fractions=(1.0, 0.0))
    with pytest.raises(ValueError, match="unknown condition 'syn'"):
        parse_condition("syn")  # a syn condition needs its model
    assert parse_condition("real+classical+syn:vae") == Condition(
        "real+classical+syn:vae", True, True, "vae"
    )
    names = [c.name for c in expand_conditions(["real", "syn"], ["a", "b"])]
    assert names == ["real", "syn:a", "syn:b"]


def test_synthetic_arguments():
    got = parse_synthetic_args(["gvae=/x", "gvae@0.25=/y"])
    assert synthetic_folder(got, "gvae", 0.25).name == "y"
    assert synthetic_folder(got, "gvae", 1.0).name == "x"
    with pytest.raises(ValueError, match="model 'vae'"):
        synthetic_folder(got, "vae", 1.0)
    for bad in ("gvae", "gvae@0=/x", "gvae@x=/y", "=/x"):
        with pytest.raises(ValueError, match="MODEL=DIR"):
            parse_synthetic_args([bad])
    with pytest.raises(ValueError, match="twice"):
        parse_synthetic_args(["a=/x", "a=/y"])


def test_missing_folder_and_size_mismatch(tmp_path, folders):
    real, _ = folders
    params = SegmentParams(**TINY)
    with pytest.raises(ValueError, match="model 'gvae'"):
        run_experiment(params, real, tmp_path / "out", {}, log=print)
    small = write_folder(tmp_path / "small", {"synthetic": ["syn-gvae"]}, size=8)
    with pytest.raises(ValueError, match="size 8 px"):
        run_experiment(params, real, tmp_path / "out", {("gvae", None): small}, log=print)
    assert not (tmp_path / "out").exists()


def test_shards_split_the_grid_and_aggregate_only_runs_nothing(tmp_path, folders):
    real, syn = folders
    out = tmp_path / "out"
    params = SegmentParams(**TINY)
    folders_ = {("gvae", None): syn}
    with pytest.raises(ValueError, match="resume"):
        run_experiment(params, real, out, folders_, shard=(0, 2), log=print)
    first = run_experiment(params, real, out, folders_, resume=True, shard=(0, 2), log=print)
    assert (first["runs"], first["executed"], first["rows"]) == (2, 2, [])
    assert not (out / "table.md").exists()  # a shard writes no tables
    partial = run_experiment(params, real, out, folders_, resume=True, aggregate_only=True)
    assert (partial["executed"], partial["missing"], partial["runs"]) == (0, 2, 2)
    second = run_experiment(params, real, out, folders_, resume=True, shard=(1, 2), log=print)
    assert second["executed"] == 2
    whole = run_experiment(params, real, out, folders_, resume=True, aggregate_only=True)
    assert (whole["executed"], whole["missing"], whole["runs"]) == (0, 0, 4)
    assert "real+syn:gvae" in (out / "table.md").read_text()
