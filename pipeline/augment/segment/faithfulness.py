"""Mask faithfulness: does a synthetic image show the organ its mask says it shows?

The Dice of a UNet trained on real slices, run on a synthetic image, against the mask that
image carries (SegGuidedDiff, Konz et al. 2024, section 4.2; MAISI-v2 reports the same check).
FID and its relatives ask whether the images look like CT; this asks whether image and label
agree, which is what a segmentation net learns from. The UNet is the fraction's ``real`` run
(the same network the ``filter`` recipe scores with, trained on that fraction's own patients
only), so the score is read per training fraction and seed, next to its **ceiling**: the same
statistic on the real test slices, i.e. how well that UNet reads real CT at all. A synthetic
set scoring near the ceiling is as readable as real data; one near 0 carries labels its images
do not support. At 2-3 training patients the ceiling itself is low, and so is every score.

Statistic: the mean over slices with a non-empty mask of the slice Dice
(:func:`pipeline.augment.segment.train.slice_dice`); empty masks are left out (an empty
prediction on them scores 1 and would reward a generator for drawing nothing).

One JSON per (model, fraction, seed) under ``<segment out>/faithfulness/``, fingerprinted by
the segmentation settings and the synthetic folder's index, so ``--resume`` keeps them and a
new synthetic set is scored again; ``faithfulness.csv`` / ``faithfulness.md`` aggregate them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from pipeline.io.tables import cell, csv_text, markdown, raw

DIRNAME = "faithfulness"
COLUMNS = (
    "model", "fraction", "n_train_patients", "n_seeds", "n_scored", "faithfulness",
    "faithfulness_min", "faithfulness_max", "ceiling", "relative",
)  # fmt: skip


def mean_slice_dice(model: torch.nn.Module, image: np.ndarray, mask: np.ndarray, batch: int):
    """(mean slice Dice over the non-empty masks, how many) of ``model`` on ``image`` vs
    ``mask``; (NaN, 0) when every mask is empty."""
    from pipeline.augment.segment.recipes import score_synthetic

    keep = np.asarray(mask).reshape(len(mask), -1).any(axis=1)
    if not keep.any():
        return float("nan"), 0
    return float(score_synthetic(model, image[keep], mask[keep], batch).mean()), int(keep.sum())


def record_name(model: str, fraction: float, seed: int) -> str:
    """``faithfulness/<model>__f<fraction>__s<seed>.json``, relative to the segment folder."""
    return f"{DIRNAME}/{model}__f{fraction}__s{seed}.json"


def fingerprint(base: str, syn_index: Mapping) -> str:
    """The run settings' fingerprint ``base`` combined with the synthetic folder's index."""
    blob = json.dumps({"run": base, "synthetic": syn_index}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def score(
    network: torch.nn.Module,
    syn_image: np.ndarray,
    syn_mask: np.ndarray,
    test_image: np.ndarray,
    test_mask: np.ndarray,
    batch: int,
) -> dict:
    """The record's numbers: faithfulness of the synthetic set and the real-test ceiling."""
    value, n = mean_slice_dice(network, syn_image, syn_mask, batch)
    ceiling, n_test = mean_slice_dice(network, test_image, test_mask, batch)
    return {"faithfulness": value, "n_scored": n, "ceiling": ceiling, "n_test_slices": n_test}


def aggregate(records: Iterable[Mapping]) -> list[dict]:
    """One row per (model, fraction): the mean over seeds, its range, and the ceiling.

    ``relative`` is faithfulness / ceiling: 1 means the synthetic images are read as well as
    real test slices by the same network.
    """
    groups: dict[tuple[str, float], list[Mapping]] = {}
    for r in records:
        groups.setdefault((r["model"], float(r["fraction"])), []).append(r)
    rows = []
    for (model, frac), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        values = np.array([r["faithfulness"] for r in runs], float)
        ceiling = float(np.nanmean([r["ceiling"] for r in runs]))
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        rows.append(
            {
                "model": model,
                "fraction": frac,
                "n_train_patients": runs[0]["n_train_patients"],
                "n_seeds": len(runs),
                "n_scored": int(np.mean([r["n_scored"] for r in runs])),
                "faithfulness": mean,
                "faithfulness_min": float(np.nanmin(values)) if np.isfinite(mean) else mean,
                "faithfulness_max": float(np.nanmax(values)) if np.isfinite(mean) else mean,
                "ceiling": ceiling,
                "relative": mean / ceiling if ceiling > 0 else float("nan"),
            }
        )
    return rows


def table_markdown(rows: list[dict]) -> str:
    """The faithfulness table (mean over seeds, min-max over seeds, ceiling)."""
    header = ("model", "fraction", "train patients", "seeds", "slices scored",
              "faithfulness (seed range)", "ceiling: real test", "relative")  # fmt: skip
    body = [
        (
            r["model"], f"{r['fraction']:g}", str(r["n_train_patients"]), str(r["n_seeds"]),
            str(r["n_scored"]),
            cell(r["faithfulness"], "{:.3f}", empty="n/a")
            + cell(r["faithfulness_min"], " ({:.3f}", empty="")
            + cell(r["faithfulness_max"], "-{:.3f})", empty=""),
            cell(r["ceiling"], "{:.3f}", empty="n/a"),
            cell(r["relative"], "{:.2f}", empty="n/a", finite=True),
        )
        for r in rows
    ]  # fmt: skip
    return markdown(header, body)


def table_csv(rows: list[dict]) -> str:
    """The same rows at full precision."""
    return csv_text(COLUMNS, ([raw(r[k], finite=True) for k in COLUMNS] for r in rows))


def read_rows(segment_dir: str | Path) -> list[dict]:
    """The rows of ``faithfulness.csv`` in a segment folder (numbers parsed); [] without it."""
    import csv

    path = Path(segment_dir) / "faithfulness.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            rows.append({k: (r[k] if k == "model" else _float(r[k])) for k in COLUMNS})
    return rows


def _float(text: str) -> float:
    return float(text) if text != "" else float("nan")
