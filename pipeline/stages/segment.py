"""``gvae segment``: does adding synthetic labelled slices raise pancreas Dice on unseen patients?

Thin CLI around :func:`pipeline.augment.segment.grid.run_experiment` (over ``segment.workers``
processes). The grid (conditions x training fractions x seeds) and every training setting come
from the ``segment`` section of the params.

Synthetic data, per model and optionally per training fraction:

* ``--synthetic MODEL=DIR``: the ``gvae generate`` folder of MODEL, used at every fraction;
* ``--synthetic MODEL@FRACTION=DIR``: the folder of a generator trained on that fraction's
  patient subset only; it wins over ``MODEL=DIR`` at that fraction;
* ``--synthetic-root ROOT``: ``ROOT/<model>/f<fraction>`` (the layout of ``gvae generate
  --each-fraction``) for every model and fraction that has one, else ``ROOT/<model>`` for every
  fraction when that folder itself is a synthetic folder. A model given with ``--synthetic``
  takes none of its folders from the root.

Repeat ``--synthetic`` for each model (and fraction). A condition whose model has no folder at
some fraction is an error naming the model, raised before any run starts.

``--resume`` keeps every finished run in ``OUT/runs`` whose settings fingerprint still matches
and runs only the rest, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import StageError
from pipeline.io.shards import INDEX_NAME
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--slices", required=True, type=Path, help="real slices folder")
    parser.add_argument("--out", required=True, type=Path, help="results folder")
    parser.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="MODEL[@FRACTION]=DIR",
        help="synthetic folder of MODEL (for one training FRACTION only when given); repeatable",
    )
    parser.add_argument(
        "--synthetic-root",
        type=Path,
        default=None,
        help="folder holding <model>/f<fraction> synthetic folders (gvae generate --each-fraction)",
    )
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="with --resume: run only every N-th planned run from the I-th; write no tables",
    )
    parser.add_argument(
        "--aggregate-only",
        action="store_true",
        help="with --resume: write the tables from finished runs, run none",
    )


def root_folders(root: Path, models: list[str], fractions: tuple[float, ...]) -> dict:
    """``{(model, fraction or None): folder}`` found under ``root`` (see the module doc)."""
    from pipeline.augment.segment.experiment import fraction_dirname  # train/generate write it

    if not root.is_dir():
        raise StageError(f"{root}: --synthetic-root is not a folder")
    found: dict = {}
    for model in models:
        if (root / model / INDEX_NAME).is_file():
            found[(model, None)] = root / model
        for f in fractions:
            folder = root / model / fraction_dirname(f)
            if (folder / INDEX_NAME).is_file():
                found[(model, f)] = folder
    return found


def main(args: argparse.Namespace) -> int:
    """Run the grid, print the per-condition means as they come, then the results table."""
    from pipeline.augment.segment.experiment import parse_synthetic_args
    from pipeline.augment.segment.grid import run_experiment
    from pipeline.params.segment import synthetic_models

    params = load_section(args.params, "segment")
    try:
        explicit = parse_synthetic_args(args.synthetic)
        folders = {}
        if args.synthetic_root is not None:
            models = sorted(synthetic_models(params.conditions, params.models))
            found = root_folders(args.synthetic_root, models, params.fractions)
            # A model named with --synthetic takes none of its folders from the root.
            named = {m for m, _ in explicit}
            folders = {k: v for k, v in found.items() if k[0] not in named}
        folders.update(explicit)
        shard = None
        if getattr(args, "shard", None) is not None:
            i, _, n = args.shard.partition("/")
            if not (i.isdigit() and n.isdigit()):
                raise ValueError(f"--shard must be I/N, got {args.shard!r}")
            shard = (int(i), int(n))
        aggregate_only = getattr(args, "aggregate_only", False)
        if aggregate_only and not args.resume:
            raise ValueError("--aggregate-only reads finished runs: give --resume too")
        summary = run_experiment(
            params,
            args.slices,
            args.out,
            folders,
            resume=args.resume,
            shard=shard,
            aggregate_only=aggregate_only,
        )
    except ValueError as exc:
        raise StageError(str(exc)) from None
    for row in summary["rows"]:
        print(
            f"  {row['condition']:<28} f={row['fraction']:<5g} Dice {row['dice']:.3f} "
            f"[{row['dice_lo']:.3f}, {row['dice_hi']:.3f}]  vs real {row['diff_vs_real']:+.3f}"
            f"  vs classical {row['diff_vs_classical']:+.3f}"
            + (
                f"  vs {row['best_control']} {row['diff_vs_control']:+.3f}"
                f" [{row['diff_control_lo']:+.3f}, {row['diff_control_hi']:+.3f}]"
                if row["best_control"]
                else ""
            )
        )
    print(
        f"gvae segment: {summary['runs']} runs ({summary['executed']} executed, "
        f"{summary['missing']} missing) -> {summary['out']}"
    )
    return 0
