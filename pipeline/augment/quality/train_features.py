"""``gvae ct-features``: train the in-domain CT feature network used by ``gvae ct-quality``.

Trains ``pipeline.augment.quality.features.CtFeatureNet`` on the dihedral pretext task over the
image
channel of the slices folder's **train** split only (no labels, no test slices), or loads it
from ``--weights FILE`` instead: a checkpoint written by this stage, or a bare torch
``state_dict`` of a network built with the ``ct_features`` params' ``channels`` and
``feature_dim`` (for weights trained elsewhere, e.g. on a GPU or on more data). Either way the
pretext accuracy is measured on the held-out split (val, or test when val is empty).

Writes, atomically as one folder: ``feature_net.pt`` (weights, config, params, slice size)
and ``summary.json`` (held-out and train pretext accuracy, chance level, timings).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from common.atomic import atomic_dir, write_json
from pipeline.io.shards import load_slices
from pipeline.params.quality import CtFeatureParams

NET_NAME = "feature_net.pt"
SUMMARY_NAME = "summary.json"
# Slices the train-split accuracy is measured on: enough for a stable figure, bounded cost.
TRAIN_EVAL_CAP = 1000


def _heldout(slices_dir: Path):
    """The first non-empty held-out split as ``(name, images)``, else ``(None, None)``."""
    for split in ("val", "test"):
        try:
            images, _, _ = load_slices(slices_dir, split)
        except ValueError as exc:
            if "no split" in str(exc):
                continue
            raise
        if len(images):
            return split, images
    return None, None


def run(
    params: CtFeatureParams,
    slices_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
) -> dict:
    """Train (or load ``weights``), score the pretext task, write ``out_dir``; return summary."""
    from models.eval.classifier import num_threads
    from pipeline.augment.quality.features import (
        load_feature_net,
        pretext_accuracy,
        save_feature_net,
        train_feature_net,
    )

    slices_dir, out_dir = Path(slices_dir), Path(out_dir)
    train, _, meta = load_slices(slices_dir, "train")
    if len(train) == 0:
        raise ValueError(f"{slices_dir}: the train split has no slices to train the network on")
    t0 = time.perf_counter()
    if weights is None:
        model = train_feature_net(train, **params.model_dump())
    else:
        model = load_feature_net(weights, params.channels, params.feature_dim)
    seconds = time.perf_counter() - t0
    split, heldout = _heldout(slices_dir)
    with num_threads(params.threads):
        acc = pretext_accuracy(model, heldout) if heldout is not None else {}
        train_acc = pretext_accuracy(model, train[:TRAIN_EVAL_CAP])["accuracy"]
    summary = {
        "source": "trained" if weights is None else f"weights: {Path(weights).name}",
        "size": int(meta["size"]),
        "config": model.config,
        "heldout_split": split,
        "n_train": int(len(train)),
        "n_heldout": 0 if heldout is None else int(len(heldout)),
        "pretext_accuracy": acc.get("accuracy"),
        "pretext_rotation_accuracy": acc.get("rotation"),
        "pretext_mirror_accuracy": acc.get("mirror"),
        "train_pretext_accuracy": train_acc,
        "chance_accuracy": 1 / 8,
        "train_seconds": round(seconds, 1),
    }
    extra = {"params": params.model_dump(mode="json"), "size": int(meta["size"])}
    with atomic_dir(out_dir) as tmp:
        save_feature_net(tmp / NET_NAME, model, extra)
        write_json(tmp / SUMMARY_NAME, summary)
    return summary
