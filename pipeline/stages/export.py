"""``gvae export``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.export.run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import StageError
from pipeline.export.run import _check_replaceable, run, send
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument(
        "--synthetic",
        type=Path,
        metavar="DIR",
        help="`gvae generate` folder (omit to only send OUT's export)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="export folder, replaced whole"
    )
    parser.add_argument("--n", type=int, metavar="N", help="slices to export (default export.n)")
    parser.add_argument(
        "--slices",
        type=Path,
        metavar="DIR",
        help="real slices the generator was trained on, for the near-copy gate "
        "(default: the folder recorded in the generator's run)",
    )
    parser.add_argument(
        "--allow-near-copies",
        action="store_true",
        help="export slices the near-copy gate flags (they are marked in the receipt)",
    )
    parser.add_argument(
        "--allow-implausible",
        action="store_true",
        help="export slices whose masks the plausibility gate refuses (marked in the DICOM "
        "files and the receipt)",
    )
    parser.add_argument("--pacs", metavar="HOST:PORT", help="send the set with C-STORE")
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --pacs: send every instance again, without asking the PACS what it holds",
    )
    parser.add_argument(
        "--aet", metavar="AET", help="our (calling) AE title (default export.calling_aet)"
    )
    parser.add_argument(
        "--called-aet", metavar="AET", help="the PACS's AE title (default export.called_aet)"
    )


def main(args: argparse.Namespace) -> int:
    """CLI entry: build the set (unless only sending), then deliver it when --pacs is given."""
    params = load_section(args.params, "export")
    if (args.aet or args.called_aet or args.force) and not args.pacs:
        raise StageError("--aet, --called-aet and --force need --pacs HOST:PORT")
    if args.synthetic is None:
        if not args.pacs:
            raise StageError("give --synthetic DIR to build an export, or --pacs to send one")
        send(params, args.out, args.pacs, args.aet, args.called_aet, args.force)
        return 0
    n = params.n if args.n is None else args.n
    if n < 1:
        raise StageError(f"--n must be >= 1, got {n}")
    _check_replaceable(args.out)
    receipt = run(
        params,
        args.synthetic,
        args.out,
        n,
        args.slices,
        args.allow_near_copies,
        args.allow_implausible,
    )
    study = receipt["study"]
    print(
        f"gvae export: {receipt['source']['exported']} images + their SEGs, study "
        f"{study['study_instance_uid']} (patient {study['patient_id']}) -> {args.out}"
    )
    if args.pacs:
        send(params, args.out, args.pacs, args.aet, args.called_aet, args.force)
    return 0
