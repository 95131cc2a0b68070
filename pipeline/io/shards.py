"""On-disk format of the ``slices`` stage: compressed npz shards per split plus ``index.json``.

Layout of a slices folder::

    index.json                    see INDEX below
    contact_sheet.png             QC grid (pipeline.io.contact_sheet)
    <split>/shard-00000.npz       split in train / val / test; shard_size samples per shard
                                  (the last one of a split may hold fewer)

Each shard (``np.savez_compressed``, readable with ``allow_pickle=False``) holds:

* ``image``       float32 ``(N, 1, S, S)`` in ``[-1, 1]``, rows anterior -> posterior, columns
                  patient right -> left;
* ``mask``        uint8 ``(N, 1, S, S)`` in ``{0, 1}``, the pancreas on the same grid;
* ``case_id``     unicode ``(N,)``, the case of each sample;
* ``slice_index`` int64 ``(N,)``, the slice ``k`` of the sample in that case's volume.

Samples are ordered by case id, then slice index; a training loader shuffles them itself.
``index.json``: ``format``, ``size``, ``pixel_mm``, ``fov_mm``, ``window`` {level, width},
``negative_fraction``, ``seed``, ``shard_size``, ``axes``, ``split_source``, ``splits``
{split: {cases, shards (paths relative to the folder), slices, positive, negative}}, ``cases``
{case_id: {split, n_slices, positive, negative, spacing_mm}}, ``skipped`` [{case_id, error}].
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import write_npz

FORMAT = "gvae-slices/1"
INDEX_NAME = "index.json"
SHARD_KEYS = ("image", "mask", "case_id", "slice_index")


def shard_name(number: int) -> str:
    """File name of shard ``number`` within its split folder."""
    return f"shard-{number:05d}.npz"


def write_shard(
    dest: str | os.PathLike,
    image: np.ndarray,
    mask: np.ndarray,
    case_id: np.ndarray,
    slice_index: np.ndarray,
) -> None:
    """Validate one shard's arrays and write them atomically as a compressed npz at ``dest``."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    n = len(image)
    if image.dtype != np.float32 or image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(
            f"{dest}: image must be float32 (N, 1, S, S), got {image.dtype} {image.shape}"
        )
    if mask.dtype != np.uint8 or mask.shape != image.shape:
        raise ValueError(f"{dest}: mask must be uint8 {image.shape}, got {mask.dtype} {mask.shape}")
    if len(case_id) != n or len(slice_index) != n:
        raise ValueError(f"{dest}: case_id and slice_index need {n} entries")
    write_npz(
        dest,
        image=image,
        mask=mask,
        case_id=np.asarray(case_id, dtype=np.str_),
        slice_index=np.asarray(slice_index, dtype=np.int64),
    )


class ShardWriter:
    """Collect the samples of one split and write every ``shard_size`` of them as one shard."""

    def __init__(self, folder: str | os.PathLike, shard_size: int, prefix: str = "") -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.prefix = prefix  # prepended to the returned names, e.g. "train/"
        self.names: list[str] = []
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending = 0

    def add(
        self, image: np.ndarray, mask: np.ndarray, case_id: str, slice_index: np.ndarray
    ) -> None:
        """Queue the ``(N, 1, S, S)`` samples of one case; full shards are written at once."""
        ids = np.full(len(image), str(case_id))  # dtype=np.str_ here would truncate to <U1
        self._parts.append((image, mask, ids, np.asarray(slice_index, dtype=np.int64)))
        self._pending += len(image)
        while self._pending >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> list[str]:
        """Write what is left as a last, smaller shard; return every shard name written."""
        if self._pending:
            self._flush(self._pending)
        return list(self.names)

    def _flush(self, n: int) -> None:
        cols = [np.concatenate([p[i] for p in self._parts]) for i in range(4)]
        name = shard_name(len(self.names))
        write_shard(self.folder / name, *(c[:n] for c in cols))
        self.names.append(self.prefix + name)
        rest = [c[n:] for c in cols]
        self._parts = [tuple(rest)] if len(rest[0]) else []
        self._pending -= n


def same_grid(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``load_slices`` metas share size, pixel spacing and intensity window.

    Areas in mm2 and HU read from a set are only comparable with another set on the same grid
    and window; tolerant float comparison, since the values went through JSON.
    """
    same = a["size"] == b["size"] and math.isclose(float(a["pixel_mm"]), float(b["pixel_mm"]))
    return same and all(
        math.isclose(float(a["window"][k]), float(b["window"][k])) for k in ("level", "width")
    )


def read_index(slices_dir: str | os.PathLike, made_by: str = "gvae slices") -> dict[str, Any]:
    """Read ``index.json`` of a slices folder; ``ValueError`` naming the file when unusable.

    ``made_by`` is the command that writes such a folder, named when the index is missing
    (``gvae generate`` writes synthetic sets in the same format).
    """
    path = Path(slices_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; run `{made_by}` first") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a slices index of format {FORMAT}")
    return index


def read_shard(path: str | os.PathLike, size: int | None = None) -> dict[str, np.ndarray]:
    """Read and check one shard; ``ValueError`` naming the file when it is damaged."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in SHARD_KEYS}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: unreadable shard ({exc})") from None
    img, msk = data["image"], data["mask"]
    ok = img.ndim == 4 and img.shape[1] == 1 and msk.shape == img.shape
    ok = ok and len(data["case_id"]) == len(img) == len(data["slice_index"])
    if not ok or (size is not None and img.shape[2:] != (size, size)):
        raise ValueError(f"{path}: inconsistent shard arrays (image {img.shape}, mask {msk.shape})")
    return data


def load_slices(
    slices_dir: str | os.PathLike, split: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load one split of a slices folder into memory.

    Returns ``(images, masks, meta)``: float32 ``(N, 1, S, S)`` in ``[-1, 1]``, uint8
    ``(N, 1, S, S)``, and ``meta`` with ``case_id`` ``(N,)``, ``slice_index`` ``(N,)``, ``split``,
    ``size``, ``pixel_mm``, ``window`` and ``axes``. An empty split gives ``N = 0``.
    """
    index = read_index(slices_dir)
    entry = _split_entry(index, slices_dir, split)
    size = int(index["size"])
    shards = [read_shard(Path(slices_dir) / name, size) for name in entry["shards"]]
    empty = {
        "image": np.zeros((0, 1, size, size), np.float32),
        "mask": np.zeros((0, 1, size, size), np.uint8),
        "case_id": np.zeros(0, np.str_),
        "slice_index": np.zeros(0, np.int64),
    }
    cols = {k: np.concatenate([empty[k]] + [s[k] for s in shards]) for k in SHARD_KEYS}
    if len(cols["image"]) != entry["slices"]:
        raise ValueError(
            f"{Path(slices_dir) / INDEX_NAME}: split {split} lists {entry['slices']} slices, "
            f"its shards hold {len(cols['image'])}"
        )
    meta = {
        "split": split,
        "case_id": cols["case_id"],
        "slice_index": cols["slice_index"],
        **{k: index[k] for k in ("size", "pixel_mm", "window", "axes")},
    }
    return cols["image"], cols["mask"], meta


def _split_entry(index: dict[str, Any], slices_dir: str | os.PathLike, split: str) -> dict:
    splits = index.get("splits", {})
    if split not in splits:
        have = ", ".join(sorted(splits))
        raise ValueError(f"{Path(slices_dir) / INDEX_NAME}: no split '{split}' (have {have})")
    return splits[split]
