"""``gvae ct-quality``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.augment.quality.evaluate`.
"""

from __future__ import annotations

import argparse

from pipeline.augment.quality.evaluate import run
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae ct-quality``."""
    parser.add_argument("--slices", required=True, help="real slices folder (train + test)")
    parser.add_argument("--features", required=True, help="folder written by `gvae ct-features`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--synthetic", help="folder written by `gvae generate` (split synthetic)")
    which.add_argument(
        "--reference", action="store_true", help="score real train slices instead (the floor)"
    )
    parser.add_argument(
        "--fractions",
        help="also check the f<fraction>/ sets of `gvae generate --each-fraction` in this folder",
    )
    parser.add_argument("--out", required=True, help="output folder, replaced atomically")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``gvae ct-quality``."""
    from pipeline.errors import StageError

    params = load_section(args.params, "ct_quality")
    try:
        fractions = getattr(args, "fractions", None)
        m = run(params, args.slices, args.features, args.out, args.synthetic, fractions)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    print(
        f"ct-quality: MMD x1e4 {m['mmd_x1e4']:.2f}, FID {m['fid']:.2f}, "
        f"P/R {m['precision']:.2f}/{m['recall']:.2f}, near-copies {m['near_copy_share']:.3f} "
        f"(threshold {m['near_copy_threshold']:.3f}) -> {args.out}"
    )
    from pipeline.augment.quality.metrics import FRACTION_PREFIX

    for key in (k for k in m if k.startswith(FRACTION_PREFIX)):
        print(f"  near-copies {key.removeprefix(FRACTION_PREFIX)}: {m[key]:.3f}")
    return 0
