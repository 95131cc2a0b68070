"""benchmarks/switch_dice.py: two grid folders compared cell by cell, paired per patient."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import switch_dice

CASES = [f"P{i:02d}" for i in range(12)]


def write_grid(folder, dice_of, seeds=(0, 1, 2), cases=CASES, conditions=("real",)):
    """A ``gvae segment --out`` folder's runs: ``dice_of(condition, seed, case)`` per patient."""
    (folder / "runs").mkdir(parents=True)
    for cond in conditions:
        for seed in seeds:
            patients = {c: {"dice": dice_of(cond, seed, c), "hd95": 1.0} for c in cases}
            rec = {"condition": cond, "fraction": 1.0, "seed": seed, "n_train_patients": 30,
                   "train_seconds": 10.0 + seed, "patients": patients}  # fmt: skip
            (folder / "runs" / f"{cond}__f1.0__s{seed}.json").write_text(json.dumps(rec))
    return folder


def noisy(shift):
    rng = np.random.default_rng(7)
    base = {c: rng.uniform(0.2, 0.7) for c in CASES}

    def dice(cond, seed, case):
        return base[case] + shift + 0.01 * ((seed + int(case[1:])) % 3 - 1)

    return dice


def test_identical_grids_differ_by_exactly_zero(tmp_path):
    a = write_grid(tmp_path / "a", noisy(0.0), conditions=("real", "real+classical"))
    rows = switch_dice.compare(a, a, n_boot=200)
    assert [(r["condition"], r["diff"], r["zero_in_ci"]) for r in rows] == [
        ("real", 0.0, "yes"), ("real+classical", 0.0, "yes")]  # fmt: skip
    assert rows[0]["seeds"] == 3 and rows[0]["patients"] == len(CASES)


def test_a_shifted_grid_is_flagged_and_the_shift_recovered(tmp_path):
    a = write_grid(tmp_path / "a", noisy(0.0))
    b = write_grid(tmp_path / "b", noisy(0.1))
    (row,) = switch_dice.compare(a, b, n_boot=500)
    assert row["diff"] == pytest.approx(0.1) and row["zero_in_ci"] == "**no**"
    assert row["better_after"] == f"{len(CASES)}/{len(CASES)}"
    assert row["dice_after"] - row["dice_before"] == pytest.approx(0.1)


def test_grids_that_are_not_the_same_grid_are_refused(tmp_path):
    a = write_grid(tmp_path / "a", noisy(0.0))
    with pytest.raises(ValueError, match="seeds"):
        switch_dice.compare(a, write_grid(tmp_path / "b", noisy(0.0), seeds=(0, 1)))
    with pytest.raises(ValueError, match="different test patients"):
        switch_dice.compare(a, write_grid(tmp_path / "c", noisy(0.0), cases=CASES[:-1]))
    with pytest.raises(FileNotFoundError, match="no runs"):
        switch_dice.compare(a, tmp_path)


def test_command_line_prints_the_table_and_the_time_ratio(tmp_path, capsys):
    a = write_grid(tmp_path / "a", noisy(0.0))
    b = write_grid(tmp_path / "b", noisy(0.0))
    out = tmp_path / "cmp.json"
    code = switch_dice.main([str(a), str(b), "--wall-before", "300", "--wall-after", "150",
                             "--n-boot", "200", "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "grid wall time: 300 s before, 150 s after (2.00x)" in text
    assert "1 of 1 cells have 0 in the patients CI" in text
    assert "1 of 1 cells have 0 in the seeds x patients CI" in text
    assert json.loads(out.read_text())["rows"][0]["condition"] == "real"


def test_seed_spread_widens_the_second_ci_only():
    """Two sides whose seeds disagree as much as retrained networks do: the patients-only CI
    of this one draw can exclude 0, the seeds x patients one must be wider and hold it."""
    rng = np.random.default_rng(3)
    patient = rng.uniform(0.2, 0.7, 13)
    run = lambda offsets: patient[None] + np.asarray(offsets)[:, None]  # noqa: E731
    before, after = run([0.05, 0.06, -0.08]), run([0.03, 0.09, -0.04])
    mean, lo, hi = switch_dice.seeds_patients_ci(before, after, n_boot=4000)
    assert mean == pytest.approx(after.mean() - before.mean()) and lo <= 0 <= hi
    assert hi - lo > 0.05  # the seed offsets' spread, not the patients' (which is zero here)
    same, slo, shi = switch_dice.seeds_patients_ci(before, before, n_boot=500)
    assert same == 0 and slo <= 0 <= shi
    shifted = switch_dice.seeds_patients_ci(before, before + 0.3, n_boot=500)
    assert shifted[1] > 0.15  # a real shift is still found
