"""How the segmentation result is presented: the forest plot, the Dice-vs-size line styles, the
one-paragraph answer, and the report's opening (profile, forest plot, answer before the tables).

Rows are hand-built with known differences, so every expectation is exact.
"""

from __future__ import annotations

import base64
import math

import pytest

from pipeline.augment.segment.plots import (
    KIND_LINESTYLES,
    forest_layout,
    line_styles,
    plot_dice_vs_size,
    plot_forest,
    render_forest,
)
from pipeline.augment.segment.reading import answer, condition_kind, rows_from_metrics
from pipeline.augment.segment.results import COLUMNS, headline_json, metrics_json
from pipeline.cli import main as gvae

from .report_fixtures import cli_args, make_run_tree

CARVE = "real+classical+carvemix"
CUT = "real+classical+cutmix"


def row(cond, frac, diff=0.0, lo=None, hi=None, n_train=4, control=CARVE, vs_control=None):
    """One aggregated row: ``diff [lo, hi]`` against real+classical, the rest plausible."""
    lo = diff - 0.02 if lo is None else lo
    hi = diff + 0.02 if hi is None else hi
    vc = (math.nan,) * 3 if vs_control is None else vs_control
    values = dict.fromkeys(COLUMNS, 0.0)
    values.update(
        condition=cond, fraction=frac, n_train_patients=n_train, n_patients=5, n_seeds=3,
        dice=0.5 + diff, dice_lo=0.45 + diff, dice_hi=0.55 + diff,
        diff_vs_classical=diff, diff_classical_lo=lo, diff_classical_hi=hi,
        best_control=control, diff_vs_control=vc[0], diff_control_lo=vc[1],
        diff_control_hi=vc[2], filter_kept_share=math.nan,
    )  # fmt: skip
    return values


def grid_rows() -> list[dict]:
    """Two sizes, conditions deliberately out of kind order; syn:gvae did not run at f0.5."""
    rows = []
    for frac, n in ((0.5, 2), (1.0, 4)):  # smaller size first: the plot must put 4 first
        rows += [
            row("real+classical+syn:cgvae", frac, 0.01 * n, n_train=n),
            row("real", frac, -0.05, n_train=n),
            row("real+syn:gvae", frac, -0.02 * n, n_train=n),
            row("real+classical", frac, 0.0, n_train=n),
            row(CARVE, frac, 0.03, n_train=n),
        ]
    rows.append(row("syn:gvae", 1.0, -0.2, n_train=4))
    return rows


# ----------------------------------------------------------------------------- forest plot
def test_forest_layout_rows_by_kind_and_one_panel_per_size():
    layout = forest_layout(grid_rows(), conditional={"cgvae"})
    assert layout.conditions == (
        "real", CARVE, "real+syn:gvae", "real+classical+syn:cgvae", "syn:gvae",
    )  # fmt: skip  # real+classical is the reference line, not a row
    assert layout.kinds == (
        "real-only", "controls", "joint synthetic", "conditional synthetic", "synthetic-only",
    )  # fmt: skip
    assert [p.fraction for p in layout.panels] == [1.0, 0.5]
    assert [p.n_train_patients for p in layout.panels] == [4, 2]
    assert layout.panels[0].title.startswith("4 training patients")
    big, small = layout.panels
    assert big.points[2] == pytest.approx((-0.08, -0.10, -0.06))  # real+syn:gvae at 4 patients
    assert small.points[3] == pytest.approx((0.02, 0.0, 0.04))  # cgvae at 2 patients
    assert all(math.isnan(v) for v in small.points[4])  # syn:gvae did not run at f0.5
    # Without knowing cgvae is conditional it is a joint synthetic condition.
    joint = forest_layout(grid_rows())
    assert condition_kind("real+classical+syn:cgvae") == "joint synthetic"
    assert joint.conditions.index("real+classical+syn:cgvae") < joint.conditions.index("syn:gvae")


def test_forest_figure_draws_every_row_in_every_panel(tmp_path):
    layout = forest_layout(grid_rows(), conditional={"cgvae"})
    fig = render_forest(layout)
    axes = fig.axes
    assert len(axes) == 2
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == list(layout.conditions)
    for ax, panel in zip(axes, layout.panels, strict=True):
        zero = [ln for ln in ax.lines if list(ln.get_xdata()) == [0, 0]]
        assert zero, "no vertical line at 0"
        drawn = sum(math.isfinite(p[0]) for p in panel.points)
        points = [ln for ln in ax.lines if ln.get_marker() == "o"]
        assert len(points) == drawn
        assert ax.get_xlim()[0] < -0.2 and ax.get_xlim()[1] > 0.2  # syn:gvae's CI fits
    written = plot_forest(grid_rows(), tmp_path / "forest.png", conditional={"cgvae"})
    assert written == layout
    assert (tmp_path / "forest.png").read_bytes()[:4] == b"\x89PNG"


def test_forest_panel_without_patient_count_is_titled_by_fraction():
    rows = [{k: v for k, v in r.items() if k != "n_train_patients"} for r in grid_rows()]
    assert [p.title for p in forest_layout(rows).panels] == ["fraction 1", "fraction 0.5"]
    assert render_forest(forest_layout([])).axes  # nothing to compare: still a figure


# ----------------------------------------------------------------------------- Dice vs size
def test_dice_vs_size_line_style_by_kind_and_no_repeated_style(tmp_path):
    names = ["real", "real+classical", CARVE, CUT, "real+syn:gvae", "real+syn:vae",
             "real+classical+syn:gvae", "real+classical+syn:gvae/filter",
             "real+classical+syn:cgvae", "syn:gvae"]  # fmt: skip
    styles = line_styles(names, conditional={"cgvae"})
    for name in names:
        kind = condition_kind(name, {"cgvae"})
        assert styles[name]["linestyle"] == KIND_LINESTYLES[kind], name
    triples = [(s["color"], str(s["linestyle"]), s["marker"]) for s in styles.values()]
    assert len(set(triples)) == len(names)
    assert styles["real+syn:gvae"]["color"] == styles["syn:gvae"]["color"]  # colour = model
    plot_dice_vs_size(grid_rows(), tmp_path / "d.png", conditional={"cgvae"})
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- the answer
def test_answer_names_the_synthetic_condition_that_beat_classical():
    rows = [
        row("real+classical", 1.0),
        row(CARVE, 1.0, 0.03, 0.005, 0.06),
        # The highest mean, but its CI includes 0: not a win.
        row("real+syn:gvae", 1.0, 0.07, -0.01, 0.15),
        row("real+classical+syn:cgvae", 1.0, 0.05, 0.01, 0.09, vs_control=(0.02, -0.01, 0.05)),
    ]
    text = answer(rows)
    assert text.startswith("At 4 training patients (fraction 1, 5 test patients, 3 seeds), ")
    assert (
        "1 of 2 synthetic conditions beat real+classical (95% CI above 0): "
        "real+classical+syn:cgvae +0.050 [+0.010, +0.090]"
    ) in text
    assert "real+syn:gvae" not in text
    assert (
        f"against the best control ({CARVE}) real+classical+syn:cgvae is "
        "+0.020 [-0.010, +0.050] (CI includes 0)"
    ) in text
    assert f"The best control, {CARVE}, is +0.030 [+0.005, +0.060] against real+classical" in text


def test_answer_when_no_synthetic_condition_beat_classical():
    rows = [
        row("real+classical", 0.34, n_train=2),
        row("real+syn:gvae", 0.34, 0.02, -0.03, 0.07, n_train=2),
        row("real+classical+syn:cgvae", 0.34, -0.04, -0.08, -0.01, n_train=2),
        row(CARVE, 0.34, -0.01, -0.04, 0.02, n_train=2),
        row("real+classical", 1.0, n_train=6, control=None),
        row("syn:gvae", 1.0, -0.3, -0.4, -0.2, n_train=6, control=None),
    ]
    text = answer(rows, level=90)
    assert (
        "At 2 training patients (fraction 0.34, 5 test patients, 3 seeds), no synthetic condition "
        "(of 2) beat real+classical: best real+syn:gvae, +0.020 [-0.030, +0.070] (CI includes 0)"
    ) in text
    assert f"The best control, {CARVE}, is -0.010 [-0.040, +0.020]" in text
    six = text.index("At 6 training patients")
    assert six < text.index("At 2 training patients")  # largest size first
    assert "best syn:gvae, -0.300 [-0.400, -0.200] (CI below 0)" in text[six:]
    assert "No mixing control ran at this size." in text[six:]
    assert "real+classical did not run" in answer([row("real+syn:gvae", 1.0, 0.5, 0.4, 0.6)])


def test_headline_is_each_conditions_difference_to_real_plus_classical():
    rows = grid_rows()
    headline = headline_json(rows)
    assert set(headline) == {f"f{float(r['fraction'])}" for r in rows}
    for r in rows:
        at = headline[f"f{float(r['fraction'])}"]
        if r["condition"] == "real+classical":
            assert at["real+classical"] == pytest.approx(r["dice"])
        else:
            assert at[f"{r['condition']} - real+classical"] == pytest.approx(r["diff_vs_classical"])


def test_answer_reads_the_same_from_metrics_json():
    rows = grid_rows()
    assert answer(rows_from_metrics(metrics_json(rows))) == answer(rows)
    with pytest.raises(ValueError, match="not a segmentation metrics record"):
        rows_from_metrics({"dice": {}})


# ----------------------------------------------------------------------------- the report
def test_report_opens_with_profile_forest_plot_and_answer(tmp_path, monkeypatch):
    from pipeline.augment.segment.results import write_results
    from pipeline.params.segment import SegmentParams

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    paths = make_run_tree(tmp_path / "run")
    cases = ["P1", "P2", "P3", "P4"]
    records = []
    for cond, dice in (("real+classical", 0.5), ("real+classical+syn:gvae", 0.6)):
        patients = {c: {"dice": dice + 0.01 * i, "hd95": 5.0} for i, c in enumerate(cases)}
        records.append({"condition": cond, "fraction": 1.0, "seed": 0, "n_train_patients": 3,
                        "n_real": 9, "n_synthetic": 0, "patients": patients})  # fmt: skip
    write_results(records, SegmentParams(n_boot=200), paths["segment"])
    assert gvae(cli_args(paths)) == 0
    html = paths["out"].read_text()

    opening = html.index('id="summary"')
    first_section = html.index("<section")
    assert opening < first_section < html.index('id="table-segmentation"')
    lead = html[opening:first_section]
    profile = lead.index("Profile <code>cpu</code> (")
    forest, said = lead.index("<img "), lead.index('id="summary-answer"')
    assert profile < forest < said
    assert "not evidence" in lead and "px slices" in lead and "UNet steps" in lead
    forest_png = (paths["segment"] / "forest.png").read_bytes()
    assert base64.b64encode(forest_png).decode() in lead
    # Every patient gains exactly 0.1, so the CI is the point: +0.100 [+0.100, +0.100].
    assert (
        "1 of 1 synthetic condition beat real+classical (95% CI above 0): "
        "real+classical+syn:gvae +0.100 [+0.100, +0.100]"
    ) in lead
    assert "At 3 training patients" in lead


def test_report_without_segmentation_says_so_first(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "params.yaml").write_text("mnist: {datasets: [mnist], models: [vae]}\n"
                                          "models: {vae: {}}\n")  # fmt: skip
    out = tmp_path / "index.html"
    args = ["report", "--params", str(tmp_path / "params.yaml"), "--out", str(out)]
    for flag in ("--tables", "--train-runs", "--ct-quality", "--ct-quality-report", "--segment"):
        args += [flag, str(tmp_path / "absent" / flag.strip("-"))]
    assert gvae([*args, "--lock", str(tmp_path / "dvc.lock"), "--repo", str(tmp_path)]) == 0
    html = out.read_text()
    lead = html[html.index('id="summary"') : html.index("<section")]
    assert "No segmentation output in this run" in lead and "Profile <code>cpu</code>" in lead
    assert "<img " not in lead and 'id="summary-answer"' not in lead


@pytest.mark.parametrize(
    ("seeds", "text"),
    [([1], "1 seed per condition"), ([3, 5], "3-5 seeds per condition"), (3, "3 seeds per")],
)
def test_the_opening_names_the_seed_counts(seeds, text):
    """With segment.seeds_by_fraction the fractions run different seed counts: the opening
    gives the range; an older run's single count still reads."""
    from pipeline.report.summary import profile_text

    scale = profile_text({"profile": "full", "image_size": 64, "segment_seeds": seeds})["scale"]
    assert text in scale


def test_the_opening_tells_a_real_cohort_run_from_the_smoke_run(tmp_path):
    """The cpu profile's smoke-run sentence belongs to its phantom cohort: the same profile with
    the slices pointed at real patients (source: pairs) says it is not that run."""
    import yaml

    from pipeline.report.summary import PURPOSE, REAL_COHORT, profile_text
    from pipeline.stages.report import run_shape
    from tests.conftest import REPO

    default = run_shape(REPO / "params.yaml")
    assert default["cohort"] == "phantom"
    assert profile_text(default)["purpose"] == PURPOSE["cpu"]
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["slices"]["source"] = "pairs"
    raw["slices"]["input"] = "data/raw/pairs"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    real = run_shape(tmp_path / "params.yaml")
    assert real["cohort"] == "patients"
    assert profile_text(real)["purpose"] == REAL_COHORT
