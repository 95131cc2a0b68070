"""The comparison table keeps our numbers and the paper's in separate columns, and reports
several training seeds as mean ± sd with their mode-collapse verdicts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from models.eval.grid import tile
from pipeline.sanity.tables import PAPER_COLUMNS, aggregate_seeds, build_table, run


def _metrics(model: str, mmd: float, stability: dict | None = None) -> dict:
    return {
        "model": model,
        "mmd_x1e4": mmd,
        "fid": 3.0,
        "class_entropy": 2.2,
        "precision": 0.8,
        "recall": 0.7,
        "ms_ssim": 0.2,
        "image_entropy": 0.1,
        "stability": stability,
    }


def _cells(md: str, row: int) -> dict[str, str]:
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[row].strip("|").split("|")]
    return dict(zip(header, cells, strict=True))


def test_table_has_every_row_and_paper_columns_apart():
    md, csv_text = build_table(
        [_metrics("vae", 12.5), _metrics("gvae", 3.25)], {"gvae": {"mmd_x1e4": 1.5}}
    )
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["model", "seeds", "collapse"]
    assert header[-len(PAPER_COLUMNS) :] == PAPER_COLUMNS
    gvae = _cells(md, 3)
    assert gvae["model"] == "gvae" and gvae["MMD x1e-4 (lower)"] == "3.25"
    assert gvae["paper_mmd_x1e4"] == "1.5"
    vae = _cells(md, 2)
    assert vae["paper_mmd_x1e4"] == ""  # unknown stays empty, never invented
    assert vae["ELBO (nats)"] == ""  # no encoder metric for a missing value
    assert csv_text.splitlines()[0].split(",")[0] == "model"


def test_seeds_become_mean_and_sample_sd_with_collapse_counts():
    flagged = {"collapsed": True, "reason": "fell 0.500 below its earlier best at step 100"}
    fine = {"collapsed": False, "reason": None}
    row = aggregate_seeds(
        "gan",
        [_metrics("gan", 10.0, flagged), _metrics("gan", 14.0, fine), _metrics("gan", 18.0, fine)],
    )
    assert row["seeds"] == 3 and row["collapsed"] == 1
    assert row["mmd_x1e4"] == pytest.approx(14.0)
    assert row["mmd_x1e4_sd"] == pytest.approx(4.0)  # ddof 1: sqrt((16 + 0 + 16) / 2)
    assert row["elbo"] is None and row["elbo_sd"] is None  # no seed reports it
    md, csv_text = build_table([row], {})
    cells = _cells(md, 2)
    assert cells["MMD x1e-4 (lower)"] == "14.00 ± 4.00"
    assert cells["seeds"] == "3" and cells["collapse"] == "1/3"
    assert next(csv.DictReader(csv_text.splitlines()))["collapse"] == "1/3"
    single = aggregate_seeds("vae", [_metrics("vae", 2.0)])
    assert single["mmd_x1e4_sd"] is None and single["collapsed"] is None  # no snapshots
    assert _cells(build_table([single], {})[0], 2)["MMD x1e-4 (lower)"] == "2.00"


def _write_run(root, name: str, seed: int, mmd: float, stability=None, losses=None) -> None:
    evals, samples, runs = root / "eval", root / "samples", root / "runs"
    for folder in (evals, samples, runs):
        (folder / name / f"s{seed}").mkdir(parents=True, exist_ok=True)
    metrics = _metrics(name, mmd, stability)
    (evals / name / f"s{seed}" / "metrics.json").write_text(json.dumps(metrics))
    images = np.full((36, 1, 16, 16), -1.0 + seed, np.float32)
    np.savez(samples / name / f"s{seed}" / "samples.npz", images=images)
    if losses:
        (runs / name / f"s{seed}" / "losses.csv").write_text(losses)


def test_run_writes_table_csv_figures_and_flags(tmp_path):
    traj = {"steps": [50, 100, 150], "class_entropy_norm": [0.9, 0.95, 0.4]}
    bad = {**traj, "collapsed": True, "reason": "fell 0.550 below its earlier best at step 150"}
    good = {**traj, "class_entropy_norm": [0.6, 0.9, 0.95], "collapsed": False, "reason": None}
    critic = "step,adv,total,critic_real,critic_fake\n10,1.0,1.0,0.5,0.4\n20,2.0,2.0,0.3,0.2\n"
    _write_run(tmp_path, "vae", 0, 0.0, good, "step,rec,kl,total\n10,1,2,3\n")
    _write_run(tmp_path, "gan", 3, 1.0, bad, critic)
    _write_run(tmp_path, "gan", 7, 3.0, good, critic)
    (tmp_path / "eval" / "real").mkdir()
    real = _metrics("real (train vs test)", 0)
    (tmp_path / "eval" / "real" / "metrics.json").write_text(json.dumps(real))
    out = tmp_path / "out"
    md = run(
        "mnist", tmp_path / "eval", tmp_path / "samples", ["vae", "gan"], out, tmp_path / "runs"
    )
    assert md.splitlines()[2].startswith("| real (train vs test) |")
    assert "| gan | 2 | 1/2 | 2.00 ± 1.41 |" in md
    assert "Mode collapse (evaluate.collapse): gan s3: fell 0.550" in md
    assert (out / "table.md").read_text().startswith("# mnist: generative models, mean ± sd")
    assert (out / "table.csv").read_text().count("\n") == 4
    assert (out / "samples.png").stat().st_size > 1000
    assert (out / "stability.png").stat().st_size > 5000
    stab = json.loads((out / "stability.json").read_text())
    assert stab["models"]["gan"]["3"]["collapsed"] and not stab["models"]["gan"]["7"]["collapsed"]
    assert len(stab["flagged"]) == 1


def test_missing_evaluation_names_the_folder(tmp_path):
    _write_run(tmp_path, "vae", 0, 1.0)
    with pytest.raises(FileNotFoundError, match="gvae: no s<seed>/metrics.json"):
        run("mnist", tmp_path / "eval", tmp_path / "samples", ["vae", "gvae"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_adversarial_panels_come_from_critic_terms(tmp_path):
    from pipeline.sanity.stability import adversarial_curves

    critic = "step,adv,total,critic_wdist\n10,1.0,1.0,0.5\n"
    _write_run(tmp_path, "vae", 0, 0.0, None, "step,rec,kl,total\n10,1,2,3\n")
    _write_run(tmp_path, "wgan", 2, 0.0, None, critic)
    per_model = {"vae": [(0, {})], "wgan": [(2, {})]}
    curves = adversarial_curves(tmp_path / "runs", per_model)
    assert list(curves) == ["wgan"] and curves["wgan"]["critic_wdist"] == [0.5]


def test_tile_overlays_mask_for_two_channels():
    img = -np.ones((1, 2, 4, 4), np.float32)
    img[0, 1, 1, 1] = 1.0
    out = tile(img, nrow=1, pad=0)
    assert out.shape == (4, 4, 3)
    assert out[1, 1, 0] > out[1, 1, 1]  # red inside the mask
    assert out[0, 0].tolist() == [0, 0, 0]


def test_evaluate_headline_holds_the_ranked_metrics_with_nan_as_null():
    """`dvc exp show` prints the headline file by default: it must carry what the tables rank."""
    from pipeline.sanity.tables import RANKED
    from pipeline.stages.evaluate import HEADLINE_METRICS, headline

    assert {ours for ours, _, _ in RANKED} <= set(HEADLINE_METRICS)
    result = {"mmd_x1e4": 1.5, "ms_ssim": float("nan"), "fid": 3.0, "kl": 9.0}
    assert headline(result) == {"mmd_x1e4": 1.5, "ms_ssim": None, "fid": 3.0}
