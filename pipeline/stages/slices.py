"""``gvae slices``: HU volumes -> windowed, resampled 2D slices in shards per patient-level split.

Reads the ingest stage's folder (``manifest.json`` + ``<case>/image.nii.gz``, ``label.nii.gz``)
and writes one output folder atomically (format in ``pipeline.io.shards``), so a rerun never
leaves a half-written folder behind. The numerical work lives in ``pipeline.slicing`` and
``pipeline.split``; this module only reads, loops and writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.cli import StageError
from pipeline.config import SlicesParams, load_section
from pipeline.io.atomic import atomic_dir, write_json
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter
from pipeline.qc import Panel, best_panel, spread, write_contact_sheet
from pipeline.slicing import slice_case
from pipeline.split import SPLITS, SplitError, check_disjoint, split_cases

MANIFEST_NAME = "manifest.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
MAX_QC_PANELS = 16
AXES = {
    "image": "(N, 1, row, col)",
    "row": "anterior -> posterior",
    "col": "patient right -> left",
    "slice_index": "k of the slice in its source volume",
}


def read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Return ``(ok case ids, skipped [{case_id, error}])`` from the ingest manifest."""
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: manifest not found; run `gvae ingest` first") from None
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "case_id" in r for r in rows):
        raise StageError(f"{path}: expected a list of objects with a 'case_id'")
    ids = [str(r["case_id"]) for r in rows]
    dupes = sorted(c for c, n in Counter(ids).items() if n > 1)
    if dupes:
        raise StageError(f"{path}: duplicate case id(s) {', '.join(dupes)}")
    ok = sorted(str(r["case_id"]) for r in rows if r.get("status") == "ok")
    skipped = [
        {"case_id": str(r["case_id"]), "error": f"ingest: {r.get('error') or r.get('status')}"}
        for r in rows
        if r.get("status") != "ok"
    ]
    return ok, sorted(skipped, key=lambda s: s["case_id"])


def read_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load ``(hu int16, label uint8, affine)``; ``ValueError`` naming the file on failure."""
    arrays = []
    affines = []
    for name, dtype in (("image.nii.gz", np.int16), ("label.nii.gz", np.uint8)):
        path = case_dir / name
        try:
            img = nib.load(path)
            arrays.append(np.asarray(img.dataobj, dtype=dtype))
            affines.append(img.affine)
        except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
            raise ValueError(f"{path}: unreadable ({exc})") from None
    if arrays[0].shape != arrays[1].shape or not np.allclose(affines[0], affines[1], atol=1e-3):
        raise ValueError(
            f"{case_dir / 'label.nii.gz'}: grid {arrays[1].shape} differs from image.nii.gz "
            f"{arrays[0].shape} (or their affines differ)"
        )
    return arrays[0], arrays[1], affines[0]


def run(params: SlicesParams, volumes_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Slice every usable case of ``volumes_dir`` into ``out_dir``; return a summary dict.

    Cases whose manifest status is not ``ok``, or whose files cannot be read, are skipped and
    listed under ``skipped`` (in the summary and in ``index.json``). The patient-level split is
    decided from the manifest's ok cases before any file is read, so it depends only on the
    params and the set of ok case ids.
    """
    volumes_dir, out_dir = Path(volumes_dir), Path(out_dir)
    ok, skipped = read_manifest(volumes_dir / MANIFEST_NAME)
    if not ok:
        raise StageError(f"{volumes_dir / MANIFEST_NAME}: no case with status 'ok'")
    splits = split_cases(ok, params.split, unavailable=[s["case_id"] for s in skipped])
    for s in skipped:
        print(f"gvae slices: skipping {s['case_id']}: {s['error']}", file=sys.stderr)

    cases: dict[str, dict[str, Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    panels: list[Panel] = []
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            writer = ShardWriter(tmp / split, params.shard_size, prefix=f"{split}/")
            for cid in splits[split]:
                try:
                    hu, label, affine = read_case(volumes_dir / cid)
                    cs = slice_case(hu, label, affine, params, cid)
                except ValueError as exc:
                    skipped.append({"case_id": cid, "error": f"slices: {exc}"})
                    print(f"gvae slices: skipping {cid}: {exc}", file=sys.stderr)
                    continue
                writer.add(cs.image, cs.mask, cid, cs.slice_index)
                cases[cid] = {
                    "split": split,
                    "n_slices": cs.n_slices,
                    "positive": cs.positive,
                    "negative": cs.negative,
                    "spacing_mm": list(cs.spacing_mm),
                }
                panel = best_panel(cid, cs.image, cs.mask, cs.slice_index)
                if panel is not None:
                    panels.append(panel)
            done = [c for c in splits[split] if c in cases]
            entries[split] = {
                "cases": done,
                "shards": writer.close(),
                "slices": sum(cases[c]["positive"] + cases[c]["negative"] for c in done),
                "positive": sum(cases[c]["positive"] for c in done),
                "negative": sum(cases[c]["negative"] for c in done),
            }
        # The split was checked when it was made; check again what is actually written.
        check_disjoint({s: e["cases"] for s, e in entries.items()})
        panels.sort(key=lambda p: p.title)  # by case id, not by split
        write_contact_sheet(tmp / CONTACT_SHEET_NAME, spread(panels, MAX_QC_PANELS))
        write_json(tmp / INDEX_NAME, _index(params, entries, cases, skipped))

    return {
        "out": str(out_dir),
        "cases": {s: len(e["cases"]) for s, e in entries.items()},
        "slices": {s: e["slices"] for s, e in entries.items()},
        "positive": sum(e["positive"] for e in entries.values()),
        "negative": sum(e["negative"] for e in entries.values()),
        "skipped": skipped,
    }


def _index(params: SlicesParams, entries: dict, cases: dict, skipped: list) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "size": params.size,
        "pixel_mm": params.fov_mm / params.size,
        "fov_mm": params.fov_mm,
        "window": {"level": params.window.level, "width": params.window.width},
        "negative_fraction": params.negative_fraction,
        "seed": params.seed,
        "shard_size": params.shard_size,
        "axes": AXES,
        "split_source": "explicit" if params.split.cases is not None else "fractions",
        "splits": entries,
        "cases": dict(sorted(cases.items())),
        "skipped": skipped,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``gvae slices`` options."""
    parser.add_argument("--volumes", required=True, help="ingest output folder (manifest.json)")
    parser.add_argument("--out", required=True, help="output folder, replaced atomically")


def main(args: argparse.Namespace) -> int:
    """Run the stage from parsed arguments; print a one-line summary; return the exit code."""
    params = load_section(args.params, "slices")
    try:
        summary = run(params, args.volumes, args.out)
    except SplitError as exc:
        # Data problems are reported per case inside run(); a split that cannot be made from
        # the ingested cases (too few, unlisted or unknown ids) is a settings problem.
        raise StageError(f"{args.params}: slices.split: {exc}") from None
    counts = ", ".join(
        f"{s} {summary['cases'][s]} cases / {summary['slices'][s]} slices" for s in SPLITS
    )
    print(f"gvae slices: {counts}; {len(summary['skipped'])} skipped -> {summary['out']}")
    return 0
