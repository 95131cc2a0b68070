"""``gvae generate``: a generator's 2-channel output -> labelled synthetic slices.

A CT generator is trained on (image, mask) pairs in [-1, 1] (``pipeline.sanity.datasets``), so each
sample G(z) carries its own label in channel 1. Thresholding that channel gives the mask; the
masks a segmentation network should not learn from are then sorted out by explicit rules:

* ``empty``: no mask pixel. The image is still a plausible abdominal slice, so by default it is
  kept as a pancreas-free negative, as real cohorts keep some negatives (``slices``).
* ``tiny``: a mask smaller than ``min_area_mm2``, a speck rather than a pancreas cross-section
  (the smallest real cross-sections at the organ's ends are a few mm across). Labelling it
  pancreas teaches noise and calling it background contradicts the drawn label: dropped.
* ``fragmented``: more 8-connected components than ``max_components``. Head, body and tail can
  part on one axial slice, so a few components are anatomy; more are a generator's scatter.
* ``ok``: everything else, always kept.

``generate_pairs`` and the mask rules are pure; ``run`` is the I/O around them: one folder,
written atomically in the slices shard format (``pipeline.io.shards``) with one split,
``synthetic``, so every consumer of real slices reads synthetic ones the same way::

    index.json        slices index (size, pixel_mm, window, ...) + "source" (model, run, seed)
    synthetic/shard-00000.npz ...   case_id "syn-<model>", slice_index = draw number
    summary.json      drawn / kept / dropped per mask kind
    grid.png          kept pairs with the mask outlined in red
    draws.png         mask-conditioned runs: several draws per mask (``pipeline.augment.draw_grid``)

The geometry (pixel spacing, window) comes from the run's ``data.json``, written when the
generator was trained, so a synthetic slice is placed in the same physical space as the real
slices it imitates.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from common.atomic import atomic_dir, write_json
from pipeline.augment.masks import MaskSet
from pipeline.augment.segment.experiment import DATA_JSON
from pipeline.errors import StageError
from pipeline.io.contact_sheet import Panel, write_contact_sheet
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter
from pipeline.params.ct import GenerateParams

KINDS = ("ok", "empty", "tiny", "fragmented")
# 8-connectivity: diagonal neighbours belong to one component, as a reader would see them.
_EIGHT = np.ones((3, 3), dtype=bool)


def split_pair(samples: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, S, S) generator output -> (image (N, 1, S, S) float32 in [-1, 1], mask uint8).

    The mask is channel 1 > ``threshold``; the image is channel 0 clipped to [-1, 1] (tanh
    outputs already lie there; the clip only guards against bf16 rounding).
    """
    x = np.asarray(samples)
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"expected (N, 2, S, S) image + mask samples, got shape {x.shape}")
    image = np.clip(x[:, :1], -1.0, 1.0).astype(np.float32)
    mask = (x[:, 1:] > threshold).astype(np.uint8)
    return image, mask


def mask_kind(mask: np.ndarray, pixel_mm: float, min_area_mm2: float, max_components: int) -> str:
    """The kind (``KINDS``) of one 2D binary mask under the module's rules."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return "empty"
    if m.sum() * pixel_mm**2 < min_area_mm2:
        return "tiny"
    _, n_components = ndimage.label(m, structure=_EIGHT)
    return "fragmented" if n_components > max_components else "ok"


def classify(mask: np.ndarray, pixel_mm: float, params: GenerateParams) -> list[str]:
    """Kinds of every mask of an (N, 1, S, S) stack."""
    return [mask_kind(m[0], pixel_mm, params.min_area_mm2, params.max_components) for m in mask]


def keep(kinds: list[str], params: GenerateParams) -> np.ndarray:
    """Boolean (N,): which samples the policy keeps (``ok`` always)."""
    policy = {"ok": "keep", "empty": params.empty, "tiny": params.tiny}
    policy["fragmented"] = params.fragmented
    return np.array([policy[k] == "keep" for k in kinds], dtype=bool)


@dataclass(frozen=True)
class Generated:
    """Kept synthetic pairs and the bookkeeping of every sample drawn."""

    image: np.ndarray  # (N, 1, S, S) float32 in [-1, 1]
    mask: np.ndarray  # (N, 1, S, S) uint8 in {0, 1}
    draw_index: np.ndarray  # (N,) int64: position of each kept sample among all drawn
    drawn: int
    counts: dict[str, int]  # drawn samples per kind
    kept_counts: dict[str, int]  # kept samples per kind


def condition_batch(conditions: MaskSet, order: np.ndarray, start: int, n: int) -> torch.Tensor:
    """(n, 2, S, S) condition pairs (image, mask in {-1, 1}) of draws ``start .. start + n``:
    the seeded ``order`` of the mask set, cycled."""
    idx = order[(start + np.arange(n)) % len(order)]
    mask = conditions.mask[idx].astype(np.float32) * 2.0 - 1.0
    return torch.from_numpy(np.concatenate([conditions.image[idx], mask], axis=1))


def generate_pairs(
    model: torch.nn.Module,
    n: int,
    pixel_mm: float,
    params: GenerateParams,
    seed: int,
    conditions: MaskSet | None = None,
) -> Generated:
    """Draw from ``model`` until ``n`` samples are kept or ``max_draw_factor * n`` are drawn.

    Sampling is seeded (a CPU ``torch.Generator``), so a checkpoint, ``n``, ``seed`` and the
    params give the same pairs. Returns at most ``n`` kept pairs in draw order. A
    mask-conditioned model draws one image per mask of ``conditions`` (in a seeded order,
    cycled) and the pair keeps that mask as its label.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if bool(getattr(model, "conditional", False)) != (conditions is not None):
        raise ValueError(f"{model.name}: masks are given exactly to mask-conditioned models")
    if params.channels_last:  # the same network in NHWC: GenerateParams.channels_last
        model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    order = (
        None
        if conditions is None
        else np.random.default_rng(seed).permutation(len(conditions.mask))
    )
    limit = int(np.ceil(params.max_draw_factor * n))
    images, masks, index, kinds_all, kept_kinds = [], [], [], [], []
    drawn = kept = 0
    while kept < n and drawn < limit:
        batch = min(params.batch_size, limit - drawn)
        cond = None if conditions is None else condition_batch(conditions, order, drawn, batch)
        drawn_batch = (
            model.sample(batch, generator=gen)
            if cond is None
            else model.sample(batch, generator=gen, condition=cond)
        )
        samples = drawn_batch.float().cpu().numpy()
        image, mask = split_pair(samples, params.mask_threshold)
        kinds = classify(mask, pixel_mm, params)
        take = np.flatnonzero(keep(kinds, params))[: n - kept]
        # Samples after the n-th kept one were never needed: they count as neither drawn nor
        # dropped, so the summary's drop counts are the policy's alone.
        used = int(take[-1]) + 1 if kept + len(take) == n else batch
        images.append(image[take])
        masks.append(mask[take])
        index.append(drawn + take)
        kinds_all += kinds[:used]
        kept_kinds += [kinds[i] for i in take]
        drawn += used
        kept += len(take)
    size = model.size
    return Generated(
        image=np.concatenate(images) if images else np.zeros((0, 1, size, size), np.float32),
        mask=np.concatenate(masks) if masks else np.zeros((0, 1, size, size), np.uint8),
        draw_index=np.concatenate(index).astype(np.int64) if index else np.zeros(0, np.int64),
        drawn=drawn,
        counts={k: Counter(kinds_all)[k] for k in KINDS},
        kept_counts={k: Counter(kept_kinds)[k] for k in KINDS},
    )


SPLIT = "synthetic"


GRID_PANELS = 16


def load_run(run_dir: Path):
    """(model in eval mode, data record) of a CT run; ``StageError`` naming the bad file."""
    from models.train.checkpoint import load_checkpoint

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


def _index(record: dict, shards: list, kept: tuple[int, int], model, run_dir: Path, draw: tuple):
    """The synthetic set's ``index.json``: the geometry of the run's training slices, one
    ``synthetic`` split of ``kept`` = (slices, positives), and its source (``draw`` = (seed,
    n requested))."""
    from models.train.checkpoint import checkpoint_digest

    (n_kept, positive), (seed, n), case_id = kept, draw, f"syn-{model.name}"
    return {
        "format": FORMAT,
        **{k: record.get(k) for k in ("size", "pixel_mm", "fov_mm", "window", "axes")},
        "splits": {
            SPLIT: {
                "cases": [case_id],
                "shards": shards,
                "slices": n_kept,
                "positive": positive,
                "negative": n_kept - positive,
            }
        },
        "cases": {case_id: {"split": SPLIT, "n_slices": n_kept}},
        "skipped": [],
        "source": {
            "model": model.name,
            "conditional": bool(model.conditional),
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


def _masks_summary(params: GenerateParams, conditions: MaskSet | None) -> dict | None:
    """Masks per source and deformations refused per reason, for ``summary.json``."""
    if conditions is None:
        return None
    return {
        "source": params.masks,
        "masks": len(conditions.mask),
        "from_slices": len(set(conditions.source.tolist())),
        "rejected": conditions.rejected,
    }


def run(
    params: GenerateParams,
    run_dir: Path,
    out_dir: Path,
    n: int,
    seed: int,
    masks_from: Path | None = None,
) -> dict:
    """Generate ``n`` kept pairs from ``run_dir`` into ``out_dir``; return the summary dict.

    A mask-conditioned run draws for the masks of ``generate.masks`` (``masks_from``: a joint
    model's generated set, for ``masks: generated``); a joint run refuses ``masks_from``.
    """
    from pipeline.augment.conditions import load_conditions

    model, record = load_run(run_dir)
    conditions = None
    if model.conditional:
        conditions = load_conditions(params, record, model.size, seed, masks_from)
    elif masks_from is not None:
        raise StageError(
            f"{run_dir}: {model.name} draws its own masks; --masks-from is for "
            "mask-conditioned models"
        )
    got = generate_pairs(model, n, float(record["pixel_mm"]), params, seed, conditions)
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
        "masks": _masks_summary(params, conditions),
    }
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp / SPLIT, shard_size=4096, prefix=f"{SPLIT}/")
        if len(got.image):
            writer.add(got.image, got.mask, case_id, got.draw_index)
        shards = writer.close()
        kept = (len(got.image), positive)
        write_json(tmp / INDEX_NAME, _index(record, shards, kept, model, run_dir, (seed, n)))
        write_json(tmp / "summary.json", summary)
        panels = [
            Panel(got.image[i, 0], got.mask[i, 0], f"{model.name} #{int(got.draw_index[i])}")
            for i in range(min(GRID_PANELS, len(got.image)))
        ]
        write_contact_sheet(tmp / "grid.png", panels)
        if conditions is not None:
            write_contact_sheet(tmp / DRAWS_NAME, _draws(model, conditions, params, record, seed),
                                ncols=DRAWS + 1)  # fmt: skip
    return summary


DRAWS_NAME, DRAWS = "draws.png", 5


def _draws(model, conditions, params: GenerateParams, record: dict, seed: int) -> list:
    """The panels of ``draws.png`` (``pipeline.augment.draw_grid``); with deformed masks the
    last row shows one training mask and its deformations."""
    from pipeline.augment.conditions import training_pairs
    from pipeline.augment.draw_grid import draw_panels

    originals = training_pairs(record) if params.masks == "deformed" else None
    return draw_panels(model, conditions, seed, draws=DRAWS, originals=originals)
