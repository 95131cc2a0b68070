"""``gvae tables``: one comparison table (markdown + CSV) and one sample figure per dataset.

Every model is a row, measured in one run by the same ``evaluate`` code, with the real-vs-real
reference on top. The paper's own Table 4 (MNIST) / Table 6 (Fashion-MNIST) values sit in
separate ``paper_*`` columns, never mixed with ours; where a value is not known it is left empty.
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
    "paper_ssim",
    "paper_log_likelihood",
    "paper_recon",
    "paper_elbo",
    "paper_kl",
]


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
    """Write ``table.md``, ``table.csv`` and ``samples.png`` to ``out_dir``; return the table."""
    from pipeline.paper_reference import PAPER_TABLES

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
    md, csv_text = build_table(rows, PAPER_TABLES.get(dataset, {}))
    title = f"# {dataset}: generative models, one run\n\n"
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.md").write_text(title + md)
        (tmp / "table.csv").write_text(csv_text)
        sample_figure(panels, tmp / "samples.png")
    return md


def main(args: argparse.Namespace) -> int:
    """CLI entry: write the table and figure, print the table."""
    from pipeline.config import load_params_models

    models = args.models or load_params_models(Path(args.params))
    print(run(args.dataset, args.evals, args.samples, models, args.out))
    return 0
