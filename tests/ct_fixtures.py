"""A tiny labelled CT-like slices folder in the real shard format, for CT stage tests.

Each patient gets slices of an ellipse "body" with a brighter blob "pancreas" whose position
and size vary by patient and slice; the mask is exactly the blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.atomic import write_json
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter

AXES = {"image": "(N, 1, row, col)", "row": "anterior -> posterior", "col": "right -> left"}


def toy_pairs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (n, 1, S, S) in [-1, 1], mask uint8 (n, 1, S, S)) of body + blob."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:size, :size] / size
    body = ((r - 0.5) / 0.4) ** 2 + ((c - 0.5) / 0.45) ** 2 < 1
    images, masks = [], []
    for _ in range(n):
        cr, cc = 0.5 + rng.uniform(-0.08, 0.08), 0.55 + rng.uniform(-0.1, 0.1)
        rad = rng.uniform(0.06, 0.12)
        blob = ((r - cr) / rad) ** 2 + ((c - cc) / (1.8 * rad)) ** 2 < 1
        img = np.where(body, 0.1, -1.0) + np.where(blob, 0.4, 0.0)
        img = img + rng.normal(0, 0.05, img.shape)
        images.append(np.clip(img, -1, 1))
        masks.append(blob)
    return (
        np.asarray(images, np.float32)[:, None],
        np.asarray(masks, np.uint8)[:, None],
    )


def write_toy_slices(
    dest: Path, splits: dict[str, list[str]], per_case: int = 6, size: int = 32
) -> Path:
    """Write a slices folder with ``per_case`` slices for every case of ``splits``."""
    dest.mkdir(parents=True, exist_ok=True)
    entries, cases = {}, {}
    for split, ids in splits.items():
        writer = ShardWriter(dest / split, shard_size=64, prefix=f"{split}/")
        for i, cid in enumerate(ids):
            seed = int(cid.rsplit("_", 1)[-1]) if cid.rsplit("_", 1)[-1].isdigit() else i
            image, mask = toy_pairs(per_case, size, seed)
            writer.add(image, mask, cid, np.arange(per_case))
            cases[cid] = {"split": split, "n_slices": per_case, "positive": per_case}
        entries[split] = {
            "cases": list(ids),
            "shards": writer.close(),
            "slices": per_case * len(ids),
            "positive": per_case * len(ids),
            "negative": 0,
        }
    index = {
        "format": FORMAT,
        "size": size,
        "pixel_mm": 200.0 / size,
        "fov_mm": 200.0,
        "window": {"level": 40.0, "width": 400.0},
        "axes": AXES,
        "splits": entries,
        "cases": cases,
        "skipped": [],
    }
    write_json(dest / INDEX_NAME, index)
    return dest
