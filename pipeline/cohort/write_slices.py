"""``gvae slices``: HU volumes or 2D pairs -> windowed, resampled 2D slices in shards per split.

Reads the ingest stage's folder (``manifest.json`` + ``<case>/image.nii.gz``, ``label.nii.gz``),
or with ``slices.source: pairs`` a folder of 2D ``images/`` + ``masks/``
(``pipeline.cohort.pairs``), and writes one output folder atomically (format in
``pipeline.io.shards``), so a rerun never leaves a half-written folder behind. The numerical work
lives in ``pipeline.cohort.slicing``, ``pipeline.cohort.pairs`` and ``pipeline.cohort.split``; this
module only
reads, loops and writes.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.atomic import atomic_dir, write_json
from pipeline.cohort import pairs as pairs_core
from pipeline.cohort.slicing import CaseSlices, case_offset_mm, mean_offset_mm, slice_case
from pipeline.cohort.split import SPLITS, SplitError, check_disjoint, split_cases
from pipeline.errors import StageError
from pipeline.io.contact_sheet import Panel, best_panel, spread, write_contact_sheet
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter
from pipeline.params.cohort import SlicesParams

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


# map_cases(fn, case_ids) -> [fn(cid) for cid in case_ids], in any executor (the Dask flow's).
CaseMap = Callable[[Callable[[str], Any], list[str]], list[Any]]


def run(
    params: SlicesParams,
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    map_cases: CaseMap | None = None,
) -> dict:
    """Slice the input folder into ``out_dir`` by ``params.source``; return a summary dict.

    ``volumes``: the ingest stage's folder (``manifest.json`` + NIfTI per case). ``pairs``: a
    folder of 2D ``images/`` + ``masks/`` (``pipeline.cohort.pairs``). Both go through the same
    ROI centre, resample + crop and window cores and the same shard writer.

    ``map_cases`` (volumes only) slices the cases through that map instead of one by one as
    they are written: ``pipeline.flows.cohort`` passes one that runs each case as a Dask task.
    Every case's slices are then held in memory until the shards are written; the output is
    the same either way (the slicing is per case and seeded by case id).
    """
    if params.source == "pairs":
        if map_cases is not None:
            raise ValueError("slices.source: pairs is sliced in one process (no map_cases)")
        return _run_pairs(params, Path(in_dir), Path(out_dir))
    return _run_volumes(params, Path(in_dir), Path(out_dir), map_cases)


def _run_volumes(
    params: SlicesParams, volumes_dir: Path, out_dir: Path, map_cases: CaseMap | None
) -> dict:
    """Cases whose manifest status is not ``ok``, or whose files cannot be read, are skipped and
    listed under ``skipped`` (in the summary and in ``index.json``). The patient-level split is
    decided from the manifest's ok cases before any file is read, so it depends only on the
    params and the set of ok case ids.
    """
    ok, skipped = read_manifest(volumes_dir / MANIFEST_NAME)
    if not ok:
        raise StageError(f"{volumes_dir / MANIFEST_NAME}: no case with status 'ok'")
    splits = split_cases(ok, params.split, unavailable=[s["case_id"] for s in skipped])
    for s in skipped:
        print(f"gvae slices: skipping {s['case_id']}: {s['error']}", file=sys.stderr)

    def offset_of(cid: str) -> tuple[float, float] | None:
        try:
            return case_offset_mm(*read_case(volumes_dir / cid))
        except ValueError:
            return None  # unreadable: skipped and named when the case is sliced below

    offset, roi = _roi(params, splits["train"], offset_of, "body: centroid of HU > -500")

    slice_one = partial(slice_volume, volumes_dir, params, offset)
    if map_cases is not None:
        slice_one = _precomputed(map_cases, slice_one, [c for s in SPLITS for c in splits[s]])
    inputs = {"source": "volumes", "selection": "pancreas slices + negative_fraction of the rest"}
    return _write(params, splits, slice_one, skipped, {"roi": roi, "input": inputs}, out_dir)


def slice_volume(
    volumes_dir: Path, params: SlicesParams, offset_mm: tuple[float, float], case_id: str
) -> CaseSlices:
    """Return the slices of ingested case ``case_id`` (``slice_case`` around the body centre
    moved by ``offset_mm``); ``ValueError`` naming the file when it cannot be read."""
    hu, label, affine = read_case(volumes_dir / case_id)
    return slice_case(hu, label, affine, params, case_id, offset_mm=offset_mm)


def _or_error(fn: Callable[[str], Any], case_id: str) -> tuple[Any, str | None]:
    """Return ``(fn(case_id), None)``, or ``(None, message)`` when it raises ``ValueError``.

    A bad case is a result, not a failed task: ``_write`` skips it and names it, as without a
    map, and a plain message crosses process and machine boundaries unchanged.
    """
    try:
        return fn(case_id), None
    except ValueError as exc:
        return None, str(exc)


def _precomputed(
    map_cases: CaseMap, fn: Callable[[str], CaseSlices], case_ids: list[str]
) -> Callable[[str], CaseSlices]:
    """Return ``fn`` for ``_write`` with every case already computed through ``map_cases``;
    a case's ``ValueError`` is raised again when ``_write`` asks for that case."""
    results = dict(zip(case_ids, map_cases(partial(_or_error, fn), case_ids), strict=True))

    def slice_one(case_id: str) -> CaseSlices:
        result, error = results.pop(case_id)  # pop: each case's arrays are freed once written
        if error is not None:
            raise ValueError(error)
        return result

    return slice_one


def _run_pairs(params: SlicesParams, pairs_dir: Path, out_dir: Path) -> dict:
    """Every pair is read and kept; any bad file stops the stage with its name (no skipping):
    a collection of hand-picked slices with a broken file is a data problem to fix, not to hide.
    """
    p = params.pairs
    try:
        cases = pairs_core.find_pairs(pairs_dir, p.pattern)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    splits = split_cases(list(cases), params.split)
    if not splits["train"]:
        raise SplitError(
            "leaves no patient in train; the models and the ROI offset need training cases"
        )

    def offset_of(cid: str) -> tuple[float, float] | None:
        return pairs_core.case_offset_mm(pairs_core.read_case_masks(cases[cid], p), p)

    offset, roi = _roi(params, splits["train"], _fatal(offset_of), "image centre")

    def slice_one(cid: str) -> CaseSlices:
        hu_d, mask_d = pairs_core.read_case(cases[cid], p)
        index = np.array([q.slice_index for q in cases[cid]], dtype=np.int64)
        return pairs_core.slice_pairs_case(hu_d, mask_d, index, params, offset_mm=offset)

    inputs = {
        "source": "pairs",
        **p.model_dump(),
        "selection": "every pair kept (negative_fraction does not apply)",
    }
    axes = {**AXES, "slice_index": "the <slice> number of the pair's file name"}
    extra = {"roi": roi, "input": inputs, "axes": axes}
    return _write(params, splits, _fatal(slice_one), [], extra, out_dir)


def _fatal(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a ``ValueError`` of ``fn`` into a ``StageError``: stop the stage, do not skip."""

    def wrapped(cid: str) -> Any:
        try:
            return fn(cid)
        except ValueError as exc:
            raise StageError(str(exc)) from None

    return wrapped


def _roi(
    params: SlicesParams,
    train: list[str],
    offset_of: Callable[[str], tuple[float, float] | None],
    body: str,
) -> tuple[tuple[float, float], dict[str, Any]]:
    """The crop offset (mm) added to every case's body centre and its record for index.json.

    ``train_masks``: the mean pancreas offset of the TRAINING cases only (``mean_offset_mm``);
    val/test masks are never read here, so they cannot move the crop (no leakage).
    """
    record: dict[str, Any] = {"centre": params.centre, "body_centre": body, "axes": "(row, col)"}
    if params.centre == "body":
        return (0.0, 0.0), {**record, "offset_mm": [0.0, 0.0], "from_cases": []}
    if not train:
        raise SplitError("leaves no patient in train; slices.centre: train_masks needs them")
    try:
        offset, used = mean_offset_mm({cid: offset_of(cid) for cid in train})
    except ValueError as exc:
        raise StageError(str(exc)) from None  # the message names slices.centre
    return offset, {**record, "offset_mm": list(offset), "from_cases": used}


def _write(
    params: SlicesParams,
    splits: dict[str, list[str]],
    slice_one: Callable[[str], CaseSlices],
    skipped: list[dict[str, str]],
    extra: dict[str, Any],
    out_dir: Path,
) -> dict:
    """Slice every case of ``splits`` with ``slice_one`` and write the folder atomically.

    A ``ValueError`` of ``slice_one`` skips that case (named in ``skipped``); anything else
    aborts and leaves ``out_dir`` as it was.
    """
    cases: dict[str, dict[str, Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    panels: list[Panel] = []
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            writer = ShardWriter(tmp / split, params.shard_size, prefix=f"{split}/")
            for cid in splits[split]:
                try:
                    cs = slice_one(cid)
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
        write_json(tmp / INDEX_NAME, {**_index(params, entries, cases, skipped), **extra})

    return {
        "out": str(out_dir),
        "cases": {s: len(e["cases"]) for s, e in entries.items()},
        "slices": {s: e["slices"] for s, e in entries.items()},
        "positive": sum(e["positive"] for e in entries.values()),
        "negative": sum(e["negative"] for e in entries.values()),
        "skipped": skipped,
        "roi": extra["roi"],
    }


def _index(params: SlicesParams, entries: dict, cases: dict, skipped: list) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "size": params.size,
        "pixel_mm": params.fov_mm / params.size,
        "fov_mm": params.fov_mm,
        "window": {"level": params.window.level, "width": params.window.width},
        "negative_fraction": params.negative_fraction if params.source == "volumes" else None,
        "seed": params.seed,
        "shard_size": params.shard_size,
        "axes": AXES,
        "split_source": "explicit" if params.split.cases is not None else "fractions",
        "splits": entries,
        "cases": dict(sorted(cases.items())),
        "skipped": skipped,
    }
