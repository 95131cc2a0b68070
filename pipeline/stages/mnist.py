"""``gvae mnist``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.sanity.data`.
"""

from __future__ import annotations

import argparse

from pipeline.params.loader import load_section
from pipeline.sanity.data import MD5, MIRROR_ENV, run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae mnist``."""
    parser.add_argument("--dataset", choices=sorted(MD5), required=True)
    parser.add_argument("--out", required=True, help="output folder for data.npz + info.json")
    parser.add_argument(
        "--mirror", default=None, help=f"local mirror root (DIR/<dataset>/*.gz); else ${MIRROR_ENV}"
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of ``gvae mnist``."""
    from pipeline.errors import StageError

    params = load_section(args.params, "mnist")
    try:
        info = run(params, args.dataset, args.out, args.mirror)
    except (OSError, ValueError) as exc:
        if isinstance(exc, PermissionError):
            raise
        raise StageError(str(exc)) from exc
    print(f"{args.dataset}: {info['shapes']} from {info['mirror'] or 'the network'} -> {args.out}")
    return 0
