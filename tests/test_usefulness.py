"""Which quality metric predicts usefulness (issue: synthetic data that can pay off, section 4):
Spearman's rho of each metric of a synthetic set against the Dice difference it produced."""

from __future__ import annotations

import csv
import json
import math

import pytest
import scipy.stats

from pipeline.augment import usefulness as U
from pipeline.augment.segment.faithfulness import COLUMNS as FAITH_COLUMNS
from pipeline.cli import main as cli_main
from pipeline.io.tables import csv_text

# Four sets (two models x two sizes), two recipes each: faithfulness orders the Dice gains
# exactly, FID runs the wrong way round (a better FID came with a smaller gain).
SETS = {("cgvae", 1.0): (0.6, 60.0, 0.05), ("cgvae", 0.1): (0.3, 40.0, 0.01),
        ("gvae", 1.0): (0.2, 20.0, -0.02), ("gvae", 0.1): (0.1, 30.0, -0.05)}  # fmt: skip


def _results():
    rows = [{"condition": c, "fraction": "1.0", "diff_vs_classical": "0.0"}
            for c in ("real", "real+classical", "real+classical+carvemix")]  # fmt: skip
    for (model, frac), (_, _, gain) in SETS.items():
        for recipe, extra in (("", 0.0), ("/filter", 0.001)):
            name = f"real+classical+syn:{model}{recipe}"
            rows.append({"condition": name, "fraction": str(frac),
                         "diff_vs_classical": str(gain + extra)})  # fmt: skip
    return rows


def _quality():
    return {m: {f"f{f}": {"fid": fid, "mmd_x1e4": 1.0, "precision": 0.5, "recall": None,
                          "ms_ssim": 0.3, "n_samples": 100}
                for (mm, f), (_, fid, _) in SETS.items() if mm == m}
            for m in ("cgvae", "gvae")}  # fmt: skip


def _faith():
    return [{"model": m, "fraction": f, "faithfulness": v} for (m, f), (v, _, _) in SETS.items()]


def test_points_pair_each_synthetic_row_with_its_sets_metrics():
    pts = U.points(_results(), _quality(), _faith())
    assert len(pts) == 8  # the controls and real rows are not synthetic sets
    p = next(p for p in pts if p["condition"] == "real+classical+syn:cgvae/filter"
             and p["fraction"] == 0.1)  # fmt: skip
    assert (p["model"], p["faithfulness"], p["fid"]) == ("cgvae", 0.3, 40.0)
    assert p["diff_vs_classical"] == pytest.approx(0.011)
    assert math.isnan(p["recall"])  # missing in by_fraction.json -> NaN, not 0


def test_correlations_are_spearman_with_the_expected_sign():
    pts = U.points(_results(), _quality(), _faith())
    rows = {r["metric"]: r for r in U.correlations(pts, alpha=0.05)}
    x = [p["faithfulness"] for p in pts]
    y = [p["diff_vs_classical"] for p in pts]
    want = scipy.stats.spearmanr(x, y)
    assert rows["faithfulness"]["rho"] == pytest.approx(want.statistic)
    assert rows["faithfulness"]["p"] == pytest.approx(want.pvalue)
    # Ranks agree exactly but the two recipes of a set share its x (ties): rho just below 1.
    assert 0.95 < rows["faithfulness"]["rho"] < 1.0 and rows["faithfulness"]["predicts"]
    # FID correlates positively with the gain here: significant, but the wrong sign.
    assert rows["fid"]["rho"] > 0 and rows["fid"]["p"] < 0.05 and not rows["fid"]["predicts"]
    # A constant metric and a missing one give no rho at all.
    assert math.isnan(rows["mmd_x1e4"]["rho"]) and rows["recall"]["n"] == 0
    text = U.reading(list(rows.values()), 0.05)
    assert text.startswith("Over 8 (condition, size) points") and "faithfulness" in text
    assert "FID" not in text


def test_no_metric_predicting_is_said_plainly():
    pts = U.points(_results()[:5], _quality(), _faith())  # two points: nothing to correlate
    rows = U.correlations(pts)
    assert not any(r["predicts"] for r in rows)
    assert U.reading(rows, 0.05).startswith("No quality metric predicts usefulness")


def test_stage_writes_table_points_and_metrics(tmp_path, capsys):
    seg, quality = tmp_path / "segment", tmp_path / "quality"
    seg.mkdir()
    header = ("condition", "fraction", "diff_vs_classical")
    (seg / "results.csv").write_text(csv_text(header, ([r[k] for k in header] for r in _results())))
    faith = [{**{k: "" for k in FAITH_COLUMNS}, **r} for r in _faith()]
    (seg / "faithfulness.csv").write_text(csv_text(FAITH_COLUMNS, ([r[k] for k in FAITH_COLUMNS]
                                                                   for r in faith)))  # fmt: skip
    for model, by_fraction in _quality().items():
        (quality / model).mkdir(parents=True)
        (quality / model / "by_fraction.json").write_text(json.dumps(by_fraction))
    out = tmp_path / "out"
    code = cli_main(["usefulness", "--quality", str(quality), "--segment", str(seg),
                     "--out", str(out)])  # fmt: skip
    assert code == 0 and "predicted by: mask faithfulness" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["faithfulness"]["rho"] > 0.95 and metrics["recall"]["rho"] is None
    headline = json.loads((out / "headline.json").read_text())  # dvc exp show's columns
    assert headline == {f"rho_{k}": v["rho"] for k, v in metrics.items()}
    assert len(list(csv.DictReader((out / "points.csv").open()))) == 8
    assert (
        "| mask faithfulness (real-trained UNet Dice) | 8 | +0.98 |"
        in (out / "table.md").read_text()
    )


def test_missing_segment_results_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"segment/results.csv: not found; run `gvae segment`"):
        U.run(tmp_path / "quality", tmp_path / "segment", tmp_path / "out")
    assert not (tmp_path / "out").exists()
