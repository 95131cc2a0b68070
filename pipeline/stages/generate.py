"""``gvae generate``: synthetic (image, mask) pairs from a trained CT run, as slice shards.

Writes one folder, atomically, in the slices shard format (``pipeline.io.shards``) with one
split, ``synthetic``, so every consumer of real slices reads synthetic ones the same way::

    index.json        slices index (size, pixel_mm, window, ...) + "source" (model, run, seed)
    synthetic/shard-00000.npz ...   case_id "syn-<model>", slice_index = draw number
    summary.json      drawn / kept / dropped per mask kind (pipeline.augment.generate)
    grid.png          kept pairs with the mask outlined in red

The geometry (pixel spacing, window) comes from the run's ``data.json``, written when the
generator was trained, so a synthetic slice is placed in the same physical space as the real
slices it imitates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.atomic import atomic_dir, write_json
from pipeline.cli import StageError
from pipeline.io.contact_sheet import Panel, write_contact_sheet
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter
from pipeline.params.ct import GenerateParams
from pipeline.params.loader import load_section
from pipeline.stages.train import DATA_JSON, fraction_dirname

SPLIT = "synthetic"
GRID_PANELS = 16


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


def load_run(run_dir: Path):
    """(model in eval mode, data record) of a CT run; ``StageError`` naming the bad file."""
    from models.train.trainer import load_checkpoint

    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise StageError(f"{ckpt}: no checkpoint; train the run first (`gvae train`)")
    try:
        model = load_checkpoint(ckpt)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise StageError(f"{ckpt}: unusable checkpoint ({exc})") from None
    if model.channels != 2:
        raise StageError(
            f"{ckpt}: the model was trained on {model.channels}-channel "
            f"{model.size}x{model.size} data; generate needs a CT run on 2-channel (image, mask) "
            "pairs (`gvae train --dataset pancreas`)"
        )
    record_path = run_dir / DATA_JSON
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(
            f"{record_path}: missing or unreadable training-data record ({exc})"
        ) from None
    if record.get("size") != model.size:
        raise StageError(
            f"{ckpt}: the network makes {model.size}x{model.size} pairs but {record_path} "
            f"describes {record.get('size')}x{record.get('size')} slices"
        )
    return model, record


def run(params: GenerateParams, run_dir: Path, out_dir: Path, n: int, seed: int) -> dict:
    """Generate ``n`` kept pairs from ``run_dir`` into ``out_dir``; return the summary dict."""
    from models.train.trainer import checkpoint_digest
    from pipeline.augment.generate import generate_pairs

    model, record = load_run(run_dir)
    got = generate_pairs(model, n, float(record["pixel_mm"]), params, seed)
    case_id = f"syn-{model.name}"
    positive = int(got.mask.reshape(len(got.mask), -1).any(axis=1).sum())
    summary = {
        "model": model.name,
        "run": str(run_dir),
        "seed": seed,
        "n_requested": n,
        "kept": len(got.image),
        "drawn": got.drawn,
        "short": len(got.image) < n,
        "drawn_by_kind": got.counts,
        "kept_by_kind": got.kept_counts,
        "dropped_by_kind": {k: got.counts[k] - got.kept_counts[k] for k in got.counts},
        "policy": params.model_dump(),
        "positive": positive,
        "negative": len(got.image) - positive,
    }
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp / SPLIT, shard_size=4096, prefix=f"{SPLIT}/")
        if len(got.image):
            writer.add(got.image, got.mask, case_id, got.draw_index)
        shards = writer.close()
        index = {
            "format": FORMAT,
            **{k: record.get(k) for k in ("size", "pixel_mm", "fov_mm", "window", "axes")},
            "splits": {
                SPLIT: {
                    "cases": [case_id],
                    "shards": shards,
                    "slices": len(got.image),
                    "positive": positive,
                    "negative": len(got.image) - positive,
                }
            },
            "cases": {case_id: {"split": SPLIT, "n_slices": len(got.image)}},
            "skipped": [],
            "source": {
                "model": model.name,
                "run": str(run_dir),
                # The weights themselves: a retrained generator invalidates the segmentation
                # runs that used its pairs (their fingerprint covers this index).
                "checkpoint_sha256": checkpoint_digest(run_dir / "checkpoint.pt"),
                "seed": seed,
                "n_requested": n,
                "trained_on": record.get("cases"),
                "fraction": record.get("fraction"),
            },
        }
        write_json(tmp / INDEX_NAME, index)
        write_json(tmp / "summary.json", summary)
        panels = [
            Panel(got.image[i, 0], got.mask[i, 0], f"{model.name} #{int(got.draw_index[i])}")
            for i in range(min(GRID_PANELS, len(got.image)))
        ]
        write_contact_sheet(tmp / "grid.png", panels)
    return summary


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
            (args.run / fraction_dirname(f), args.out / fraction_dirname(f)) for f in fractions
        ]
    else:
        pairs = [(args.run, args.out)]
    for run_dir, out in pairs:
        s = run(params, run_dir, out, n, seed)
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped_by_kind"].items() if v)
        note = " (SHORT of the requested n: most masks were dropped)" if s["short"] else ""
        print(
            f"gvae generate: {s['model']}: kept {s['kept']} of {s['drawn']} drawn "
            f"({s['negative']} negatives; dropped: {dropped or 'none'}){note} -> {out}"
        )
    return 0
