"""``gvae evaluate``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.sanity.evaluate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.atomic import write_json
from pipeline.io.tables import is_missing
from pipeline.sanity.datasets import DATASETS
from pipeline.sanity.evaluate import run

# The numbers of a run that `dvc exp show` and `dvc metrics diff` print by default (the tables
# rank models by MMD and MS-SSIM; git-tracked): every metric stays in --out.
HEADLINE_METRICS = ("mmd_x1e4", "ms_ssim", "fid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data", required=True, type=Path, help="output of the data stage")
    parser.add_argument("--classifier", required=True, type=Path, help="classifier run folder")
    parser.add_argument("--samples", type=Path, help="sample stage folder (samples.npz)")
    parser.add_argument("--run", type=Path, help="training run folder (for encoder metrics)")
    parser.add_argument("--reference", action="store_true", help="evaluate real train images")
    parser.add_argument("--out", required=True, type=Path, help="metrics.json path")
    parser.add_argument(
        "--headline", type=Path, default=None, help=f"also write {HEADLINE_METRICS} to this JSON"
    )


def headline(result: dict) -> dict:
    """``HEADLINE_METRICS`` of ``result``; NaN -> null (``dvc metrics`` rejects NaN)."""
    values = {k: result.get(k) for k in HEADLINE_METRICS}
    return {k: None if is_missing(v) else v for k, v in values.items()}


def main(args: argparse.Namespace) -> int:
    """CLI entry."""
    result = run(
        Path(args.params),
        args.dataset,
        args.data,
        args.classifier,
        args.out,
        samples_dir=args.samples,
        run_dir=args.run,
        reference=args.reference,
    )
    if args.headline is not None:
        write_json(args.headline, headline(result))
    print(
        f"{result['model']} on {result['dataset']}: MMD {result['mmd']:.4g}, "
        f"FID {result['fid']:.3g}, class entropy {result['class_entropy']:.3f}"
    )
    if (result.get("stability") or {}).get("collapsed"):
        print(f"mode collapse: {result['stability']['reason']}")
    return 0
