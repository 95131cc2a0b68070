"""``gvae generate``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.augment.generate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.augment.generate import run
from pipeline.augment.segment.experiment import fraction_dirname
from pipeline.errors import StageError
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--run", required=True, type=Path, help="CT training run folder")
    parser.add_argument("--n", type=int, default=None, help="pairs to keep (default generate.n)")
    parser.add_argument("--out", required=True, type=Path, help="output folder, replaced whole")
    parser.add_argument("--seed", type=int, default=None, help="default generate.seed")
    parser.add_argument(
        "--each-fraction",
        action="store_true",
        help="RUN holds f<fraction> runs (train --each-fraction): one set each, OUT/f<fraction>",
    )
    parser.add_argument(
        "--masks-from",
        type=Path,
        default=None,
        help="generate.masks: generated: a joint model's generate output (with --each-fraction "
        "its f<fraction> sets) whose masks a mask-conditioned model draws images for",
    )


def main(args: argparse.Namespace) -> int:
    """CLI entry: generate and print what was kept and dropped."""
    params = load_section(args.params, "generate")
    n = params.n if args.n is None else args.n
    if n < 1:
        raise StageError(f"--n must be >= 1, got {n}")
    seed = params.seed if args.seed is None else args.seed
    if args.each_fraction:
        fractions = load_section(args.params, "segment").fractions
        pairs = [
            (args.run / fraction_dirname(f), args.out / fraction_dirname(f), fraction_dirname(f))
            for f in fractions
        ]
    else:
        pairs = [(args.run, args.out, None)]
    for run_dir, out, sub in pairs:
        masks_from = args.masks_from
        if masks_from is not None and sub is not None:
            masks_from = masks_from / sub
        s = run(params, run_dir, out, n, seed, masks_from)
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped_by_kind"].items() if v)
        note = " (SHORT of the requested n: most masks were dropped)" if s["short"] else ""
        print(
            f"gvae generate: {s['model']}: kept {s['kept']} of {s['drawn']} drawn "
            f"({s['negative']} negatives; dropped: {dropped or 'none'}){note} -> {out}"
        )
    return 0
