"""``gvae ct-features``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.augment.quality.train_features`.
"""

from __future__ import annotations

import argparse

from pipeline.augment.quality.train_features import run
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae ct-features``."""
    parser.add_argument("--slices", required=True, help="slices folder (index.json + shards)")
    parser.add_argument("--out", required=True, help="output folder, replaced atomically")
    parser.add_argument(
        "--weights",
        help="use these weights instead of training: a feature_net.pt of this stage or a torch "
        "state_dict of CtFeatureNet(ct_features.channels, ct_features.feature_dim)",
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of ``gvae ct-features``."""
    from pipeline.errors import StageError

    params = load_section(args.params, "ct_features")
    try:
        s = run(params, args.slices, args.out, args.weights)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    acc = "n/a" if s["pretext_accuracy"] is None else f"{s['pretext_accuracy']:.3f}"
    print(
        f"ct-features: pretext accuracy {acc} on {s['heldout_split']} "
        f"(chance 0.125, train {s['train_pretext_accuracy']:.3f}) -> {args.out}"
    )
    return 0
