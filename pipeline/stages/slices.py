"""``gvae slices``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.cohort.write_slices`.
"""

from __future__ import annotations

import argparse

from pipeline.cohort.split import SPLITS, SplitError
from pipeline.cohort.write_slices import run
from pipeline.errors import StageError
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``gvae slices`` options; ``--volumes`` is the older name of ``--input``."""
    parser.add_argument(
        "--input",
        "--volumes",
        dest="input",
        help="input folder (default: slices.input): the ingest output (slices.source: volumes) "
        "or a folder of images/ + masks/ (slices.source: pairs)",
    )
    parser.add_argument("--out", required=True, help="output folder, replaced atomically")


def main(args: argparse.Namespace) -> int:
    """Run the stage from parsed arguments; print a one-line summary; return the exit code."""
    params = load_section(args.params, "slices")
    if args.input is not None:
        params = params.model_copy(update={"input": args.input})
    try:
        summary = run(params, params.input, args.out)
    except SplitError as exc:
        # Data problems are reported per case inside run(); a split that cannot be made from
        # the input cases (too few, unlisted or unknown ids, no train) is a settings problem.
        raise StageError(f"{args.params}: slices.split: {exc}") from None
    counts = ", ".join(
        f"{s} {summary['cases'][s]} cases / {summary['slices'][s]} slices" for s in SPLITS
    )
    print(f"gvae slices: {counts}; {len(summary['skipped'])} skipped -> {summary['out']}")
    return 0
