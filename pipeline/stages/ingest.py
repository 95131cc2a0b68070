"""``gvae ingest``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.cohort.ingest`.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cohort.ingest import run
from pipeline.cohort.sources.registry import sources
from pipeline.params.loader import IngestParams, load_section, with_overrides


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``gvae ingest`` options; unset ones fall back to the params ``ingest`` section."""
    parser.add_argument(
        "--source", choices=sorted(sources()), help="input layout (default: ingest.source)"
    )
    parser.add_argument(
        "--images",
        help="TCIA image folder holding PANCREAS_NNNN/ case folders (decathlon: imagesTr/)",
    )
    parser.add_argument(
        "--labels",
        help="folder holding labelNNNN.nii.gz or .dcm (SEG, RTSTRUCT) files (decathlon: labelsTr/)",
    )
    parser.add_argument("--out", required=True, help="output folder (one subfolder per case)")
    parser.add_argument("--workers", type=int, help="worker processes (1 = in-process)")
    parser.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="every case warning is an error (a default taken, a damaged file passed over, a "
        "label that is incomplete or not soft tissue); exit non-zero if any case failed (good "
        "cases and manifest are still written)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the stage from parsed CLI arguments; return the exit code."""
    params: IngestParams = load_section(args.params, "ingest")
    params = with_overrides(
        params,
        {
            "source": args.source,
            "images": args.images,
            "labels": args.labels,
            "workers": args.workers,
            "strict": args.strict,
        },
    )
    rows = run(params, params.images, params.labels, args.out)
    failed = [r["case_id"] for r in rows if r["status"] != "ok"]
    print(
        f"ingest: {len(rows) - len(failed)} of {len(rows)} case(s) written to {args.out}",
        file=sys.stderr,
    )
    if failed and params.strict:
        print(f"ingest: --strict: failed case(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
