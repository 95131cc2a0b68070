"""``gvae usefulness``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.augment.usefulness` (which quality metric of a
synthetic set predicts the Dice difference it produced).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae usefulness``."""
    parser.add_argument("--quality", required=True, help="folder of <model>/by_fraction.json")
    parser.add_argument("--segment", required=True, help="output folder of `gvae segment`")
    parser.add_argument("--out", required=True, help="output folder (table, points, metrics)")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``gvae usefulness``."""
    from pipeline.augment.usefulness import reading, run
    from pipeline.errors import StageError
    from pipeline.params.loader import load_section

    alpha = load_section(args.params, "segment").alpha
    try:
        rows = run(args.quality, args.segment, args.out, alpha)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    print(f"usefulness: {reading(rows, alpha)} -> {args.out}")
    return 0
