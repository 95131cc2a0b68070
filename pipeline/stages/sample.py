"""``gvae sample``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.sanity.sample`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.sanity.datasets import DATASETS
from pipeline.sanity.sample import run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--run", required=True, type=Path, help="training run folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--dataset", choices=DATASETS, help="dataset of --data (traversals)")
    parser.add_argument("--data", type=Path, help="data stage folder: test images (traversals)")


def main(args: argparse.Namespace) -> int:
    """CLI entry."""
    out = run(Path(args.params), args.run, args.out, args.dataset, args.data)
    print(f"samples written to {out}")
    return 0
