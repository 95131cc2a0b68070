"""What predicts usefulness: each quality metric of a synthetic set against the Dice difference
that set produced in the segmentation grid, as Spearman rank correlations.

FID does not predict whether synthetic data helps segmentation (Xing et al. 2023, "The Beauty
or the Beast: Which Aspect of Synthetic Medical Images Deserves Our Focus?"; in this project's
own grid WGAN-GP had the best FID and the worst synthetic-only Dice); mask faithfulness is the
candidate the field proposes (Konz et al. 2024). This module checks that on the run at hand.

Points: one per (synthetic condition, training fraction) row of the segmentation results, i.e.
every model, every recipe and every size; its y is the paired Dice difference against
``real+classical`` (``diff_vs_classical``), its x the metric of the set that condition drew
from: FID, MMD, precision, recall, MS-SSIM of the model's set at that fraction
(``gvae ct-quality --fractions``, ``by_fraction.json``) and the mask faithfulness of the same set
(``faithfulness.csv`` of ``gvae segment``). The recipes of one set share its x (ties; Spearman's
rho ranks them by their mean rank). Spearman's rho (rank correlation, robust to the metrics'
scales) with its two-sided p-value (``scipy.stats.spearmanr``); a metric "predicts" usefulness
at level ``alpha`` when p < alpha and the sign is the one a better set should give (lower FID,
MMD and MS-SSIM; higher precision, recall and faithfulness). With a handful of points no rho is
significant: the table then says so instead of ranking noise.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import scipy.stats

from pipeline.io.tables import cell, csv_text, is_missing, json_number, markdown, raw

# metric -> (label, the sign of rho a useful metric shows: +1 higher is better, -1 lower is)
METRICS = {
    "faithfulness": ("mask faithfulness (real-trained UNet Dice)", +1),
    "fid": ("FID (in-domain features)", -1),
    "mmd_x1e4": ("MMD x 1e4 (pixels)", -1),
    "precision": ("precision", +1),
    "recall": ("recall", +1),
    "ms_ssim": ("MS-SSIM (lower = more diverse)", -1),
}
TARGET = "diff_vs_classical"
POINT_COLUMNS = ("condition", "model", "fraction", TARGET, *METRICS)
TABLE_COLUMNS = ("metric", "n", "rho", "p", "expected_sign", "predicts")


def points(
    results: Iterable[Mapping],
    quality: Mapping[str, Mapping[str, Mapping]],
    faithfulness: Iterable[Mapping],
) -> list[dict]:
    """One point per synthetic (condition, fraction) row of ``results`` (``results.csv``).

    ``quality``: ``{model: {"f<fraction>": metrics}}`` (``by_fraction.json`` per model);
    ``faithfulness``: the rows of ``faithfulness.csv``. A metric a set lacks is NaN.
    """
    from pipeline.params.segment import parse_condition

    faith = {(r["model"], float(r["fraction"])): r["faithfulness"] for r in faithfulness}
    out = []
    for r in results:
        cond = parse_condition(r["condition"], True)
        frac = float(r["fraction"])
        if cond.model is None or cond.control:
            continue
        q = quality.get(cond.model, {}).get(f"f{frac}", {})
        point = {"condition": r["condition"], "model": cond.model, "fraction": frac,
                 TARGET: _f(r.get(TARGET))}  # fmt: skip
        point.update({k: _f(q.get(k)) for k in METRICS if k != "faithfulness"})
        point["faithfulness"] = _f(faith.get((cond.model, frac)))
        out.append(point)
    return out


def correlations(pts: list[dict], alpha: float = 0.05) -> list[dict]:
    """Spearman's rho of every metric against the Dice difference, over the points where both
    are finite; rho and p are NaN with fewer than 3 points or a constant column."""
    rows = []
    for key, (_, sign) in METRICS.items():
        pairs = [(p[key], p[TARGET]) for p in pts if _finite(p[key]) and _finite(p[TARGET])]
        rho = p_value = math.nan
        if len(pairs) >= 3:
            x, y = np.array(pairs).T
            if np.ptp(x) > 0 and np.ptp(y) > 0:
                res = scipy.stats.spearmanr(x, y)
                rho, p_value = float(res.statistic), float(res.pvalue)
        predicts = _finite(p_value) and p_value < alpha and np.sign(rho) == sign
        rows.append({"metric": key, "n": len(pairs), "rho": rho, "p": p_value,
                     "expected_sign": sign, "predicts": bool(predicts)})  # fmt: skip
    return rows


def reading(rows: list[dict], alpha: float) -> str:
    """One sentence: which metric, if any, predicts usefulness at level ``alpha``."""
    good = [r for r in rows if r["predicts"]]
    n = max((r["n"] for r in rows), default=0)
    if not good:
        return (
            f"No quality metric predicts usefulness here: none has a Spearman rho with the "
            f"expected sign at p < {alpha:g} over {n} (condition, size) points."
        )
    names = ", ".join(
        f"{METRICS[r['metric']][0]} (rho {r['rho']:+.2f}, p {r['p']:.3g})" for r in good
    )
    return f"Over {n} (condition, size) points, usefulness is predicted by: {names}."


def table_markdown(rows: list[dict]) -> str:
    header = ("metric", "points", "Spearman rho", "p", "a better set has", "predicts usefulness")
    body = [
        (METRICS[r["metric"]][0], str(r["n"]), cell(r["rho"], "{:+.2f}", empty="n/a"),
         cell(r["p"], "{:.3g}", empty="n/a"), "higher" if r["expected_sign"] > 0 else "lower",
         "yes" if r["predicts"] else "no")
        for r in rows
    ]  # fmt: skip
    return markdown(header, body)


def points_csv(pts: list[dict]) -> str:
    return csv_text(POINT_COLUMNS, ([raw(p[k], finite=True) for k in POINT_COLUMNS] for p in pts))


def table_csv(rows: list[dict]) -> str:
    return csv_text(TABLE_COLUMNS, ([raw(r[k], finite=True) for k in TABLE_COLUMNS] for r in rows))


def read_inputs(quality_dir: Path, segment_dir: Path) -> tuple[list[dict], dict, list[dict]]:
    """(results.csv rows, {model: by_fraction.json}, faithfulness.csv rows); ``ValueError``
    naming the missing or unreadable file."""
    from pipeline.augment.quality.evaluate import BY_FRACTION_NAME
    from pipeline.augment.segment.faithfulness import read_rows

    results_path = segment_dir / "results.csv"
    if not results_path.is_file():
        raise ValueError(f"{results_path}: not found; run `gvae segment` first")
    with results_path.open(newline="") as fh:
        results = list(csv.DictReader(fh))
    quality = {}
    for path in sorted(quality_dir.glob(f"*/{BY_FRACTION_NAME}")):
        try:
            quality[path.parent.name] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return results, quality, read_rows(segment_dir)


def _f(v) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _finite(v: float) -> bool:
    return not is_missing(v, finite=True)


def run(quality_dir, segment_dir, out_dir, alpha: float = 0.05) -> list[dict]:
    """Read the inputs, correlate, and write ``table.md`` (with the reading), ``table.csv``,
    ``points.csv``, ``metrics.json`` and ``headline.json`` (each metric's rho alone) into
    ``out_dir`` (one folder, replaced atomically)."""
    from common.atomic import atomic_dir, write_json

    results, quality, faith = read_inputs(Path(quality_dir), Path(segment_dir))
    pts = points(results, quality, faith)
    rows = correlations(pts, alpha)
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.md").write_text(table_markdown(rows) + "\n" + reading(rows, alpha) + "\n")
        (tmp / "table.csv").write_text(table_csv(rows))
        (tmp / "points.csv").write_text(points_csv(pts))
        metrics = {
            r["metric"]: {"rho": json_number(r["rho"]), "p": json_number(r["p"]), "n": r["n"]}
            for r in rows
        }
        write_json(tmp / "metrics.json", metrics)
        # The default `dvc exp show` columns: one rho per quality metric (git-tracked).
        headline = {f"rho_{r['metric']}": json_number(r["rho"]) for r in rows}
        write_json(tmp / "headline.json", headline)
    return rows
