"""``gvae tables``: one comparison table (markdown + CSV) and two figures per dataset.

Every model is a row, measured by the same ``evaluate`` code, with the real-vs-real reference
on top. A model trained with several seeds (``mnist.seeds``, one ``s<seed>`` folder each) shows
the mean and the sample standard deviation over its seeds ("mean ± sd", n in the ``seeds``
column); the ``collapse`` column counts the seeds flagged for mode collapse by ``evaluate``
(``evaluate.collapse``). ``stability.png`` draws, per dataset, the loss curves of every
adversarial model (the terms its critic and generator log) and every model's class-entropy
trajectory during training. The paper's own values (Tables 4, 6 and 7, all MNIST; see
``pipeline/sanity/paper_reference.py``) sit in separate ``paper_*`` columns, never mixed with ours,
with their source and unit under the table; where a value is not known it is left empty.
Under that, and in ``ranking.json``, Kendall's tau between the paper's ranking of the models
and ours on MMD and on MS-SSIM (``pipeline/sanity/ranking.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from common.atomic import atomic_dir
from pipeline.io.tables import cell, csv_text, is_missing, markdown

# (key in metrics.json, column header, format)
COLUMNS = [
    ("mmd_x1e4", "MMD x1e-4 (lower)", "{:.2f}"),
    ("ms_ssim", "MS-SSIM gen pairs", "{:.3f}"),
    ("log_likelihood", "log-lik IWAE (nats)", "{:.1f}"),
    ("recon_mse", "recon MSE", "{:.4f}"),
    ("elbo", "ELBO (nats)", "{:.1f}"),
    ("kl", "KL (nats)", "{:.1f}"),
    ("class_entropy", "class entropy (log10=2.303)", "{:.3f}"),
    ("image_entropy", "image entropy (lower)", "{:.3f}"),
    ("fid", "FID classifier (lower)", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
]
PAPER_COLUMNS = [
    "paper_mmd_x1e4",
    "paper_ms_ssim",
    "paper_log_likelihood",
    "paper_recon",
    "paper_elbo",
    "paper_kl",
    "paper_log_px_nats",
]
# (our key in metrics.json, the paper's key, label): the metrics whose model order is compared.
RANKED = [("mmd_x1e4", "mmd_x1e4", "MMD"), ("ms_ssim", "ms_ssim", "MS-SSIM")]


def _mean_sd(value, fmt: str, sd=None) -> str:
    """``value`` in ``fmt``, then `` ± sd`` when ``sd`` is known; empty without a value."""
    return "" if is_missing(value) else cell(value, fmt) + cell(sd, " ± " + fmt)


def aggregate_seeds(model: str, per_seed: list[dict]) -> dict:
    """One table row from the ``metrics.json`` of each seed of ``model``.

    Every ``COLUMNS`` metric becomes the mean over the seeds that report it, with ``<key>_sd``
    the sample standard deviation (ddof 1; None for one seed); ``seeds`` is the number of runs
    and ``collapsed`` how many of them ``evaluate`` flagged for mode collapse (None when no run
    saved training snapshots).
    """
    row: dict = {"model": model, "seeds": len(per_seed)}
    for key, _, _ in COLUMNS:
        values = [m[key] for m in per_seed if not is_missing(m.get(key))]
        row[key] = float(np.mean(values)) if values else None
        row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    verdicts = [m["stability"]["collapsed"] for m in per_seed if m.get("stability")]
    row["collapsed"] = sum(verdicts) if verdicts else None
    return row


def build_table(rows: list[dict], paper: dict[str, dict]) -> tuple[str, str]:
    """Return (markdown, csv) text for ``rows`` with the paper's reference columns.

    ``rows`` are metrics dicts, or :func:`aggregate_seeds` rows (``<key>_sd`` shown as
    "mean ± sd"; ``seeds`` and ``collapsed`` filled). The CSV holds the same cells.
    """
    header = ["model", "seeds", "collapse"] + [c[1] for c in COLUMNS] + PAPER_COLUMNS
    body = []
    for row in rows:
        ref = paper.get(row["model"], {})
        seeds, collapsed = row.get("seeds"), row.get("collapsed")
        body.append(
            [row["model"], "" if seeds is None else str(seeds)]
            + ["" if collapsed is None else f"{collapsed}/{seeds}"]
            + [_mean_sd(row.get(k), f, row.get(f"{k}_sd")) for k, _, f in COLUMNS]
            + [cell(ref.get(k[len("paper_") :])) for k in PAPER_COLUMNS]
        )
    # table.csv has always ended its lines with "\r\n", the csv module's default.
    return markdown(header, body), csv_text(header, body, lineterminator="\r\n")


def paper_legend(units: dict[str, str]) -> str:
    """Markdown list: the source table and unit of every ``paper_*`` column (from ``units``)."""
    lines = ["Paper columns (as printed in the paper; source and unit):", ""]
    lines += [f"- `{c}`: {units.get(c[len('paper_') :], 'unknown')}" for c in PAPER_COLUMNS]
    return "\n".join(lines) + "\n"


def ranking(rows: list[dict], paper: dict[str, dict]) -> dict[str, dict]:
    """Kendall's tau per ``RANKED`` metric between ``paper`` and the model ``rows``.

    Returns {our metric key: :func:`pipeline.sanity.ranking.kendall_agreement` result plus
    ``label``, ``paper`` and ``ours`` (model -> value of the common models)}.
    """
    from pipeline.sanity.ranking import kendall_agreement

    out = {}
    for ours_key, paper_key, label in RANKED:
        theirs = {m: v[paper_key] for m, v in paper.items() if paper_key in v}
        mine = {r["model"]: r.get(ours_key) for r in rows}
        result = kendall_agreement(theirs, mine)
        common = result["models"]
        out[ours_key] = {
            "label": label,
            **result,
            "paper": {m: theirs[m] for m in common},
            "ours": {m: mine[m] for m in common},
        }
    return out


def sample_figure(panels: list[tuple[str, np.ndarray]], path: Path, per_model: int = 36) -> None:
    """Save one PNG with a grid of samples per model, side by side, titled by model name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.eval.grid import tile

    side = int(math.sqrt(per_model))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels, strict=True):
        ax.imshow(tile(images[: side * side], nrow=side), cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _seed_metrics(evals: Path, name: str) -> list[tuple[int, dict]]:
    from pipeline.sanity.seeds import seed_dirs

    found = [(seed, d / "metrics.json") for seed, d in seed_dirs(evals / name)]
    found = [(seed, path) for seed, path in found if path.is_file()]
    if not found:
        raise FileNotFoundError(
            f"{evals / name}: no s<seed>/metrics.json; run `gvae evaluate` for {name}"
        )
    return [(seed, json.loads(path.read_text())) for seed, path in found]


def run(
    dataset: str,
    evals: Path,
    samples: Path,
    models: list[str],
    out_dir: Path,
    runs: Path | None = None,
) -> str:
    """Write ``table.md``, ``table.csv``, ``ranking.json``, ``samples.png`` and, with ``runs``,
    ``stability.png`` + ``stability.json`` to ``out_dir``.

    Returns the markdown below the title: the table, the paper columns' legend and the ranking.
    """
    from pipeline.sanity.paper_reference import PAPER_SOURCE, PAPER_TABLES, PAPER_UNITS
    from pipeline.sanity.ranking import agreement_markdown
    from pipeline.sanity.seeds import seed_dirname
    from pipeline.sanity.stability import stability_figure, stability_summary

    rows, panels, per_model = [], [], {}
    ref = evals / "real" / "metrics.json"
    if ref.is_file():
        rows.append(json.loads(ref.read_text()))
    for name in models:
        seeds = _seed_metrics(evals, name)
        per_model[name] = seeds
        rows.append(aggregate_seeds(name, [m for _, m in seeds]))
        first = samples / name / seed_dirname(seeds[0][0]) / "samples.npz"
        panels.append((name, np.load(first)["images"]))
    paper = PAPER_TABLES.get(dataset, {})
    md, table_csv = build_table(rows, paper)
    source = PAPER_SOURCE.get(dataset, f"the paper reports no {dataset} table")
    ranks = ranking([r for r in rows if r["model"] in models], paper)
    labelled = {r["label"]: r for r in ranks.values()}
    md += "\n" + paper_legend(PAPER_UNITS) + "\n" + agreement_markdown(labelled, source)
    n_seeds = sorted({len(v) for v in per_model.values()})
    runs_text = "one run" if n_seeds == [1] else "mean ± sd over seeds"
    title = f"# {dataset}: generative models, {runs_text}\n\n"
    summary = {"dataset": dataset, "source": source, "method": "scipy.stats.kendalltau (tau-b)"}
    stab = stability_summary(per_model)
    if stab["flagged"]:
        md += "\nMode collapse (evaluate.collapse): " + "; ".join(stab["flagged"]) + "\n"
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.md").write_text(title + md)
        (tmp / "table.csv").write_text(table_csv)
        ranking_json = json.dumps({**summary, "metrics": ranks}, indent=2) + "\n"
        (tmp / "ranking.json").write_text(ranking_json)
        sample_figure(panels, tmp / "samples.png")
        (tmp / "stability.json").write_text(json.dumps(stab, indent=2) + "\n")
        if runs is not None:
            stability_figure(dataset, runs, per_model, tmp / "stability.png")
    return md
