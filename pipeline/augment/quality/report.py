"""``gvae ct-quality-report``: the CT quality comparison as one table (markdown + CSV).

Reads every ``<set>/metrics.json`` under ``--evals`` (written by ``gvae ct-quality``, one
folder per model plus the ``--reference`` floor) and writes ``table.md`` and ``table.csv``
into ``--out`` (one folder, replaced atomically). Rows: the real test split (target), the real
train floor, then the models in ``--order`` (default: folder names, sorted). When the sets
were checked per training fraction (``gvae ct-quality --fractions``), ``near_copies.md`` (and
``near_copies.csv``, full precision) gives each model's near-copy share per fraction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.atomic import atomic_dir
from pipeline.augment.quality.evaluate import METRICS_NAME


def read_evals(evals_dir: Path, order: list[str] | None = None) -> dict[str, dict]:
    """``{set name: metrics}`` of every ``<name>/metrics.json``; ``ValueError`` names bad files."""
    found = {p.parent.name: p for p in sorted(evals_dir.glob(f"*/{METRICS_NAME}"))}
    if not found:
        raise ValueError(f"{evals_dir}: no */{METRICS_NAME}; run `gvae ct-quality` first")
    names = sorted(found)
    if order:
        missing = [n for n in order if n not in found]
        if missing:
            raise ValueError(f"{evals_dir}: no {METRICS_NAME} for {', '.join(missing)}")
        names = list(order) + [n for n in names if n not in order]
    out = {}
    for name in names:
        try:
            out[name] = json.loads(found[name].read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{found[name]}: not valid JSON ({exc})") from None
    return out


def run(evals_dir: str | os.PathLike, out_dir: str | os.PathLike, order=None) -> dict:
    """Build the table from ``evals_dir`` and write ``table.md`` + ``table.csv`` to ``out_dir``."""
    from pipeline.augment.quality.metrics import (
        fraction_near_copy_csv,
        fraction_near_copy_rows,
        fraction_near_copy_table,
        quality_csv,
        quality_table,
        table_rows,
    )

    evals = read_evals(Path(evals_dir), order)
    rows = table_rows(evals)
    by_fraction = fraction_near_copy_rows(evals)  # once, for both formats
    with atomic_dir(out_dir) as tmp:
        (tmp / "table.md").write_text(quality_table(rows))
        (tmp / "table.csv").write_text(quality_csv(rows))
        if by_fraction[1]:
            (tmp / "near_copies.md").write_text(fraction_near_copy_table(by_fraction))
            (tmp / "near_copies.csv").write_text(fraction_near_copy_csv(by_fraction))
    return rows
