"""Aggregate the segmentation runs: per-patient means over seeds, bootstrap CIs, tables, plots.

For each (condition, fraction): every test patient's Dice is averaged over the seeds first (the
seeds measure training noise, the patients the population), then the mean over patients gets a
percentile-bootstrap CI (``pipeline.augment.segment.stats``). The differences to ``real``, to
``real+classical`` and to the best mixing control (CarveMix or CutMix, the one with the higher
mean Dice) at the same fraction are paired per patient: synthetic data has to beat classical
augmentation and a cheap mixing control, not only real-only training. HD95 is aggregated the same
way, ignoring NaNs (a patient with no slice where both prediction and ground truth are non-empty
has no HD95).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from common.atomic import atomic_path, write_json
from pipeline.augment.segment.plots import conditional_models, plot_dice_vs_size, plot_forest
from pipeline.augment.segment.reading import CLASSICAL
from pipeline.augment.segment.stats import bootstrap_ci, paired_difference
from pipeline.io.tables import cell, csv_text, is_missing, json_number, markdown, raw
from pipeline.params.segment import CONTROL_KINDS, SegmentParams

BASELINE = "real"
# CLASSICAL (real+classical, imported): the second baseline, classical augmentation alone
CONTROL = "best control"  # the third: the best mixing control at the fraction, by mean Dice
# Each baseline's (difference, lo, hi) columns.
DIFF_COLUMNS = {
    BASELINE: ("diff_vs_real", "diff_lo", "diff_hi"),
    CLASSICAL: ("diff_vs_classical", "diff_classical_lo", "diff_classical_hi"),
    CONTROL: ("diff_vs_control", "diff_control_lo", "diff_control_hi"),
}
COLUMNS = (
    "condition", "fraction", "n_train_patients", "n_patients", "n_seeds", "n_real",
    "n_synthetic", "dice", "dice_lo", "dice_hi", "diff_vs_real", "diff_lo", "diff_hi",
    "diff_vs_classical", "diff_classical_lo", "diff_classical_hi",
    "hd95_mm", "hd95_lo", "hd95_hi", "seconds",
    "best_control", "diff_vs_control", "diff_control_lo", "diff_control_hi", "filter_kept_share",
)  # fmt: skip


def per_patient(records: list[dict], key: str) -> dict[str, float]:
    """``{case_id: mean over the runs (seeds) of patients[case_id][key]}``, NaN-aware."""
    cases = sorted({c for r in records for c in r["patients"]})
    out = {}
    for c in cases:
        vals = [r["patients"][c][key] for r in records if c in r["patients"]]
        vals = [math.nan if v is None else float(v) for v in vals]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN patient -> NaN
            out[c] = float(np.nanmean(vals)) if vals else math.nan
    return out


def _paired(
    dice: dict[str, float], cases: list[str], base: list[dict] | None, ci: dict, what: str
) -> tuple[float, float, float]:
    """Per-patient paired difference ``dice - base`` with its CI; NaNs when ``base`` did not run."""
    if base is None:
        return (math.nan,) * 3
    ref = per_patient(base, "dice")
    if sorted(ref) != cases:
        raise ValueError(f"{what} scored different patients")
    return paired_difference([dice[c] for c in cases], [ref[c] for c in cases], **ci)


def best_controls(groups: dict[tuple[str, float], list[dict]]) -> dict[float, str]:
    """``{fraction: name}`` of the mixing control with the highest mean Dice at each fraction.

    The mean is over patients of the seed-averaged Dice (the table's ``dice``); a tie goes to
    the first name in sorted order. Fractions without a control are absent.
    """
    best: dict[float, tuple[float, str]] = {}
    for (cond, frac), runs in sorted(groups.items()):
        if cond not in CONTROL_KINDS:
            continue
        mean = float(np.nanmean(list(per_patient(runs, "dice").values())))
        if frac not in best or mean > best[frac][0]:
            best[frac] = (mean, cond)
    return {f: name for f, (_, name) in best.items()}


def _kept_share(runs: list[dict]) -> float:
    """Mean over seeds of a filter run's kept share of synthetic slices; NaN for other runs."""
    shares = [r["filter"]["kept_share"] for r in runs if "filter" in r]
    return float(np.mean(shares)) if shares else math.nan


def aggregate(records: list[dict], params: SegmentParams) -> list[dict]:
    """One row per (condition, fraction) in run order; see ``COLUMNS``.

    Each row's differences against ``real``, ``real+classical`` and the fraction's best
    mixing control (``best_controls``) are paired per patient; NaN where that baseline did
    not run at the fraction.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in records:
        groups.setdefault((r["condition"], r["fraction"]), []).append(r)
    ci = {"n_boot": params.n_boot, "alpha": params.alpha, "seed": params.boot_seed}
    controls = best_controls(groups)
    rows = []
    for (cond, frac), runs in groups.items():
        dice = per_patient(runs, "dice")
        hd = per_patient(runs, "hd95")
        cases = sorted(dice)
        d, d_lo, d_hi = bootstrap_ci([dice[c] for c in cases], **ci)
        h, h_lo, h_hi = bootstrap_ci([hd[c] for c in cases], **ci)
        diff = {}
        names = {BASELINE: BASELINE, CLASSICAL: CLASSICAL, CONTROL: controls.get(frac)}
        for base, keys in DIFF_COLUMNS.items():
            paired = _paired(
                dice, cases, groups.get((names[base], frac)), ci,
                f"{cond} and {names[base]} at f={frac}",
            )  # fmt: skip
            diff.update(zip(keys, paired, strict=True))
        rows.append(
            {
                "condition": cond,
                "fraction": frac,
                "n_train_patients": runs[0]["n_train_patients"],
                "n_patients": len(cases),
                "n_seeds": len(runs),
                "n_real": int(np.mean([r["n_real"] for r in runs])),
                "n_synthetic": int(np.mean([r["n_synthetic"] for r in runs])),
                "dice": d, "dice_lo": d_lo, "dice_hi": d_hi,
                **diff,
                "hd95_mm": h, "hd95_lo": h_lo, "hd95_hi": h_hi,
                "seconds": float(np.mean([r.get("seconds", math.nan) for r in runs])),
                "best_control": controls.get(frac),
                "filter_kept_share": _kept_share(runs),
            }
        )  # fmt: skip
    return rows


def metrics_json(rows: list[dict]) -> dict:
    """``{"f1.0": {"real": {"dice": .., "dice_lo": .., ...}, ...}}`` for ``dvc metrics show``."""
    out: dict[str, dict] = {}
    for r in rows:
        keys = [k for k in COLUMNS if k not in ("condition", "fraction")]
        out.setdefault(f"f{float(r['fraction'])}", {})[r["condition"]] = {
            k: json_number(r[k]) for k in keys
        }
    return out


def headline_json(rows: list[dict]) -> dict:
    """The headline of the experiment, for the default ``dvc exp show`` / ``dvc metrics diff``:
    ``{"f1.0": {"real+classical": dice, "<condition> - real+classical": paired difference}}``.

    Only the mean Dice of the classical baseline and every other condition's paired Dice
    difference to it per fraction (CIs and the rest: ``metrics.json``)."""
    out: dict[str, dict] = {}
    for r in rows:
        at = out.setdefault(f"f{float(r['fraction'])}", {})
        if r["condition"] == CLASSICAL:
            at[CLASSICAL] = json_number(r["dice"])
        else:
            at[f"{r['condition']} - {CLASSICAL}"] = json_number(r[DIFF_COLUMNS[CLASSICAL][0]])
    return out


def _fmt(v, digits: int = 3) -> str:
    """A float with ``digits`` decimals, anything else as ``str``; ``n/a`` for None, NaN, inf."""
    return cell(v, f"{{:.{digits}f}}" if isinstance(v, float) else "{}", empty="n/a", finite=True)


def _with_ci(r: dict, keys: tuple[str, str, str], digits: int = 3) -> str:
    """``value [lo, hi]`` from the three ``keys`` of ``r``, each with :func:`_fmt`."""
    value, lo, hi = (_fmt(r[k], digits) for k in keys)
    return f"{value} [{lo}, {hi}]"


def _slices_cell(r: dict) -> str:
    """``real / syn`` slices, with a filter's kept share: ``12 / 12 (kept 40%)``."""
    kept = r.get("filter_kept_share", math.nan)
    share = "" if is_missing(kept, finite=True) else f" (kept {kept:.0%})"
    return f"{r['n_real']} / {r['n_synthetic']}{share}"


def _control_cell(r: dict) -> str:
    """The difference against the best control with its CI and the control's short name."""
    name = r.get("best_control")
    short = f" ({name.rpartition('+')[2]})" if name else ""
    return _with_ci(r, DIFF_COLUMNS[CONTROL]) + short


def table_markdown(rows: list[dict], params: SegmentParams) -> str:
    """A readable markdown table of ``rows`` with the CI level stated."""
    level = round(100 * (1 - params.alpha))
    intro = (
        f"Test-set pancreas Dice per condition and training fraction: mean over patients of the "
        f"seed-averaged per-patient Dice, {level}% percentile-bootstrap CI over patients "
        f"({params.n_boot} resamples); differences paired per patient against `{BASELINE}`, "
        f"`{CLASSICAL}` and the best mixing control at the fraction (CarveMix or CutMix, by mean "
        "Dice; named in brackets). A filter row's synthetic count is followed by the share of "
        "the synthetic slices its filter kept."
    )
    header = [
        "condition", "fraction", "train patients", "test patients", "seeds", "real / syn slices",
        f"Dice [{level}% CI]", f"Dice - real [{level}% CI]",
        f"Dice - real+classical [{level}% CI]", f"Dice - best control [{level}% CI]",
        f"HD95 mm [{level}% CI]",
    ]  # fmt: skip
    body = [
        [
            f"{r['condition']}", f"{r['fraction']:g}", f"{r['n_train_patients']}",
            f"{r['n_patients']}", f"{r['n_seeds']}", _slices_cell(r),
            _with_ci(r, ("dice", "dice_lo", "dice_hi")),
            _with_ci(r, DIFF_COLUMNS[BASELINE]),
            _with_ci(r, DIFF_COLUMNS[CLASSICAL]),
            _control_cell(r),
            _with_ci(r, ("hd95_mm", "hd95_lo", "hd95_hi"), digits=1),
        ]
        for r in rows
    ]  # fmt: skip
    return intro + "\n\n" + markdown(header, body)


def results_csv(rows: list[dict]) -> str:
    """``rows`` as CSV text (empty cells for NaN)."""
    return csv_text(COLUMNS, [[raw(r[k], finite=True) for k in COLUMNS] for r in rows])


OUTPUTS = (
    "metrics.json", "headline.json", "results.csv", "table.md", "dice_vs_size.png", "forest.png"
)  # fmt: skip


def write_results(records: list[dict], params: SegmentParams, out_dir: Path) -> list[dict]:
    """Aggregate ``records`` and write ``OUTPUTS`` into ``out_dir`` (each atomically)."""
    rows = aggregate(records, params)
    write_json(out_dir / "metrics.json", metrics_json(rows))
    write_json(out_dir / "headline.json", headline_json(rows))
    texts = {"results.csv": results_csv(rows), "table.md": table_markdown(rows, params)}
    for name, text in texts.items():
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
    level = round(100 * (1 - params.alpha))
    conditional = conditional_models(r["condition"] for r in rows)
    plot_dice_vs_size(rows, out_dir / "dice_vs_size.png", level, conditional)
    plot_forest(rows, out_dir / "forest.png", level, conditional)
    return rows
