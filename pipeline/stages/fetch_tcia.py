"""``gvae fetch-tcia``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.cohort.fetch.download`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cohort.fetch.download import run
from pipeline.params.fetch import FetchParams
from pipeline.params.loader import load_section, with_overrides


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``gvae fetch-tcia`` options; unset ones fall back to the params ``fetch`` section."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="download folder")
    parser.add_argument("--collection", help="TCIA collection (default: fetch.collection)")
    parser.add_argument(
        "--patients", nargs="+", metavar="ID", help="only these PatientIDs (default: all)"
    )
    parser.add_argument("--base-url", help="NBIA REST API v1 base URL (default: fetch.base_url)")
    parser.add_argument("--labels-url", help="labels archive URL (default: fetch.labels_url)")
    parser.add_argument("--no-labels", action="store_true", help="fetch the images only")
    parser.add_argument("--retries", type=int, help="retries per request (default: fetch.retries)")
    parser.add_argument("--timeout", type=float, help="seconds (default: fetch.timeout_s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    """Run the stage from parsed CLI arguments; return 0, or 1 if anything failed."""
    params: FetchParams = load_section(args.params, "fetch")
    params = with_overrides(
        params,
        {
            "collection": args.collection,
            "base_url": args.base_url,
            "labels_url": args.labels_url,
            "retries": args.retries,
            "timeout_s": args.timeout,
        },
    )
    report = run(params, args.out, args.patients, not args.no_labels, not args.no_progress)
    print(
        f"fetch-tcia: {len(report['downloaded'])} series downloaded, "
        f"{len(report['skipped'])} already complete, {len(report['failed'])} failed; "
        f"labels: {report['labels']}",
        file=sys.stderr,
    )
    for message in report["failed"]:
        print(f"fetch-tcia: failed: {message}", file=sys.stderr)
    if report["failed"]:
        return 1
    print(
        f"fetch-tcia: ingest with --images {args.out / params.collection} "
        f"--labels {args.out / params.labels_folder}",
        file=sys.stderr,
    )
    return 0
