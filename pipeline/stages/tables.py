"""``gvae tables``: one comparison table (markdown + CSV) and one sample figure per dataset.

Every model is a row, measured in one run by the same ``evaluate`` code, with the real-vs-real
reference on top. The paper's own values (Tables 4, 6 and 7, all MNIST; see
``pipeline/paper_reference.py``) sit in separate ``paper_*`` columns, never mixed with ours,
with their source and unit under the table; where a value is not known it is left empty.
Under that, and in ``ranking.json``, Kendall's tau between the paper's ranking of the models
and ours on MMD and on MS-SSIM (``pipeline/augment/ranking.py``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from pipeline.io.atomic import atomic_dir

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


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value)


def build_table(rows: list[dict], paper: dict[str, dict]) -> tuple[str, str]:
    """Return (markdown, csv) text for ``rows`` (metrics dicts) with paper reference columns."""
    header = ["model"] + [c[1] for c in COLUMNS] + PAPER_COLUMNS
    body = []
    for row in rows:
        ref = paper.get(row["model"], {})
        body.append(
            [row["model"]]
            + [_fmt(row.get(k), f) for k, _, f in COLUMNS]
            + [_fmt(ref.get(k[len("paper_") :]), "{}") for k in PAPER_COLUMNS]
        )
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in body]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    return "\n".join(md) + "\n", buf.getvalue()


def paper_legend(units: dict[str, str]) -> str:
    """Markdown list: the source table and unit of every ``paper_*`` column (from ``units``)."""
    lines = ["Paper columns (as printed in the paper; source and unit):", ""]
    lines += [f"- `{c}`: {units.get(c[len('paper_') :], 'unknown')}" for c in PAPER_COLUMNS]
    return "\n".join(lines) + "\n"


def ranking(rows: list[dict], paper: dict[str, dict]) -> dict[str, dict]:
    """Kendall's tau per ``RANKED`` metric between ``paper`` and the model ``rows``.

    Returns {our metric key: :func:`pipeline.augment.ranking.kendall_agreement` result plus
    ``label``, ``paper`` and ``ours`` (model -> value of the common models)}.
    """
    from pipeline.augment.ranking import kendall_agreement

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

    from models.grid import tile

    side = int(math.sqrt(per_model))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels, strict=True):
        ax.imshow(tile(images[: side * side], nrow=side), cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--evals", required=True, type=Path, help="folder of <model>/metrics.json")
    parser.add_argument("--samples", required=True, type=Path, help="folder of <model>/samples.npz")
    parser.add_argument("--models", nargs="+", help="row order (default: params `mnist.models`)")
    parser.add_argument("--out", required=True, type=Path)


def run(dataset: str, evals: Path, samples: Path, models: list[str], out_dir: Path) -> str:
    """Write ``table.md``, ``table.csv``, ``ranking.json`` and ``samples.png`` to ``out_dir``.

    Returns the markdown below the title: the table, the paper columns' legend and the ranking.
    """
    from pipeline.augment.ranking import agreement_markdown
    from pipeline.paper_reference import PAPER_SOURCE, PAPER_TABLES, PAPER_UNITS

    rows, panels = [], []
    ref = evals / "real" / "metrics.json"
    if ref.is_file():
        rows.append(json.loads(ref.read_text()))
    for name in models:
        path = evals / name / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `gvae evaluate` for {name}")
        metrics = json.loads(path.read_text())
        metrics["model"] = name
        rows.append(metrics)
        panels.append((name, np.load(samples / name / "samples.npz")["images"]))
    paper = PAPER_TABLES.get(dataset, {})
    md, csv_text = build_table(rows, paper)
    source = PAPER_SOURCE.get(dataset, f"the paper reports no {dataset} table")
    ranks = ranking([r for r in rows if r["model"] in models], paper)
    labelled = {r["label"]: r for r in ranks.values()}
    md += "\n" + paper_legend(PAPER_UNITS) + "\n" + agreement_markdown(labelled, source)
    title = f"# {dataset}: generative models, one run\n\n"
    summary = {"dataset": dataset, "source": source, "method": "scipy.stats.kendalltau (tau-b)"}
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.md").write_text(title + md)
        (tmp / "table.csv").write_text(csv_text)
        ranking_json = json.dumps({**summary, "metrics": ranks}, indent=2) + "\n"
        (tmp / "ranking.json").write_text(ranking_json)
        sample_figure(panels, tmp / "samples.png")
    return md


def main(args: argparse.Namespace) -> int:
    """CLI entry: write the table and figure, print the table."""
    from pipeline.config import load_params_models

    models = args.models or load_params_models(Path(args.params))
    print(run(args.dataset, args.evals, args.samples, models, args.out))
    return 0
