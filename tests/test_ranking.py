"""Kendall's tau between the paper's ranking of the models and ours (tables stage)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.sanity.paper_reference import PAPER_TABLES, PAPER_UNITS
from pipeline.sanity.ranking import FEWER, agreement_markdown, kendall_agreement
from pipeline.sanity.tables import PAPER_COLUMNS, run


def test_identical_ranking_gives_one_and_reversed_minus_one():
    paper = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    same = kendall_agreement(paper, {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0, "e": 0.0})
    assert same["tau"] == pytest.approx(1.0) and same["n"] == 4
    assert same["models"] == ["a", "b", "c", "d"]  # "e" is ours only
    assert same["p_value"] == pytest.approx(1 / 12)  # exact: 2 of the 4! orders are as extreme
    reversed_ = kendall_agreement(paper, {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0})
    assert reversed_["tau"] == pytest.approx(-1.0)
    assert reversed_["our_order"] == ["d", "c", "b", "a"]
    text = agreement_markdown({"MMD": same, "MS-SSIM": reversed_}, "Table 4")
    assert "- MMD: tau = 1.000, p = 0.0833, n = 4 models (a, b, c, d)" in text
    assert "- MS-SSIM: tau = -1.000" in text


def test_fewer_than_three_common_models_is_not_a_number():
    paper = {"a": 1.0, "b": 2.0, "c": 3.0}
    result = kendall_agreement(paper, {"a": 1.0, "b": 2.0, "x": 3.0, "c": float("nan")})
    assert result["tau"] is None and result["p_value"] is None and result["n"] == 2
    assert result["note"] == FEWER == "n/a (fewer than 3 models in common)"
    assert f"- MMD: {FEWER}; n = 2 (a, b)" in agreement_markdown({"MMD": result}, "Table 4")


def _write(evals, samples, name: str, mmd: float, ms_ssim: float) -> None:
    (evals / name / "s0").mkdir(parents=True)
    metrics = {"model": name, "mmd_x1e4": mmd, "ms_ssim": ms_ssim}
    (evals / name / "s0" / "metrics.json").write_text(json.dumps(metrics))
    (samples / name / "s0").mkdir(parents=True)
    np.savez(samples / name / "s0" / "samples.npz", images=np.zeros((36, 1, 16, 16), np.float32))


def _cells(md: str, model: str) -> dict[str, str]:
    lines = md.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(ln for ln in lines if ln.startswith(f"| {model} |"))
    return dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))


def test_tables_stage_ranks_against_the_papers_table_4(tmp_path):
    evals, samples, out = tmp_path / "eval", tmp_path / "samples", tmp_path / "out"
    paper = PAPER_TABLES["mnist"]
    models = ["vae", "wgan_gp", "vae_gan", "alpha_gan", "gvae"]
    for name in models:
        ref = paper[name]
        # Our MMD in the paper's order, our MS-SSIM in the reverse order; vae has neither.
        _write(evals, samples, name, 100 * ref.get("mmd_x1e4", 1.0), 1 - ref.get("ms_ssim", 0))
    md = run("mnist", evals, samples, models, out)
    ranking = json.loads((out / "ranking.json").read_text())["metrics"]
    assert ranking["mmd_x1e4"]["tau"] == pytest.approx(1.0)
    assert ranking["ms_ssim"]["tau"] == pytest.approx(-1.0)
    assert ranking["mmd_x1e4"]["models"] == ["alpha_gan", "gvae", "vae_gan", "wgan_gp"]
    assert ranking["mmd_x1e4"]["paper"]["wgan_gp"] == 0.327
    table = (out / "table.md").read_text()
    assert "- MMD: tau = 1.000" in table and "- MS-SSIM: tau = -1.000" in table
    # The paper's columns are filled for every model it reports, from Tables 4, 6 and 7.
    assert _cells(md, "wgan_gp")["paper_ms_ssim"] == "0.996"
    assert _cells(md, "gvae")["paper_log_px_nats"] == "-82.2"
    assert _cells(md, "vae")["paper_kl"] == "0.165" and _cells(md, "vae")["paper_mmd_x1e4"] == ""
    assert all(f"`{c}`: {PAPER_UNITS[c[6:]]}" in table for c in PAPER_COLUMNS)


def test_dataset_without_a_paper_table_says_not_available(tmp_path):
    evals, samples, out = tmp_path / "eval", tmp_path / "samples", tmp_path / "out"
    for i, name in enumerate(["vae", "gvae", "wgan_gp"]):
        _write(evals, samples, name, float(i), 0.5)
    run("fashion_mnist", evals, samples, ["vae", "gvae", "wgan_gp"], out)
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["metrics"]["mmd_x1e4"]["n"] == 0 and ranking["metrics"]["ms_ssim"]["tau"] is None
    assert (out / "table.md").read_text().count(FEWER) == 2
