"""``gvae phantom``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.cohort.phantom.write`.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from pipeline.cohort.phantom.write import run
from pipeline.errors import StageError
from pipeline.params.cohort import PhantomParams
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae phantom``; unset ones fall back to the ``phantom`` params section."""
    parser.add_argument("--out", required=True, help="output folder (TCIA layout inside)")
    parser.add_argument("--cases", type=int, help="number of cases (default: params)")
    parser.add_argument("--seed", type=int, help="random seed (default: params)")


def main(args: argparse.Namespace) -> int:
    """Run the stage from parsed arguments; return the exit code."""
    params = load_section(args.params, "phantom")
    overrides = {k: getattr(args, k) for k in ("cases", "seed") if getattr(args, k) is not None}
    try:
        params = PhantomParams.model_validate({**params.model_dump(), **overrides})
    except ValidationError as exc:
        bad = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise StageError(f"invalid option(s): {bad}") from None
    ids = run(params, args.out)
    print(f"wrote {len(ids)} synthetic case(s) ({ids[0]}..{ids[-1]}) to {args.out}")
    return 0
