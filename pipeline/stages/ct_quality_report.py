"""``gvae ct-quality-report``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.augment.quality.report`.
"""

from __future__ import annotations

import argparse

from pipeline.augment.quality.report import run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae ct-quality-report``."""
    parser.add_argument("--evals", required=True, help="folder of <set>/metrics.json")
    parser.add_argument("--out", required=True, help="output folder for table.md + table.csv")
    parser.add_argument("--order", help="comma-separated set names, the table's row order")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``gvae ct-quality-report``."""
    from pipeline.errors import StageError

    order = [s for s in (args.order or "").split(",") if s]
    try:
        rows = run(args.evals, args.out, order)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    print(f"ct-quality-report: {len(rows)} rows -> {args.out}")
    return 0
