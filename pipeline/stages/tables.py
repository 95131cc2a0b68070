"""``gvae tables``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.sanity.tables`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.sanity.tables import run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--evals", required=True, type=Path, help="folder of <model>/s<seed>/metrics.json"
    )
    parser.add_argument(
        "--samples", required=True, type=Path, help="folder of <model>/s<seed>/samples.npz"
    )
    parser.add_argument(
        "--runs", type=Path, help="folder of <model>/s<seed>/losses.csv (stability.png)"
    )
    parser.add_argument("--models", nargs="+", help="row order (default: params `mnist.models`)")
    parser.add_argument("--out", required=True, type=Path)


def main(args: argparse.Namespace) -> int:
    """CLI entry: write the table and figures, print the table."""
    from pipeline.params.models import load_params_models

    models = args.models or load_params_models(Path(args.params))
    print(run(args.dataset, args.evals, args.samples, models, args.out, runs=args.runs))
    return 0
