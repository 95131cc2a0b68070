"""Training images for the generative stages, as one tensor per split.

MNIST-like data come from the ``mnist`` stage (28x28 padded to 32); CT slices come from the
``slices`` stage as two channels, image and mask, both in [-1, 1], so a generator learns the
pair jointly and every synthetic slice arrives with its label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MNIST_LIKE = ("mnist", "fashion_mnist")
CT = ("pancreas",)
DATASETS = MNIST_LIKE + CT


def load_images(
    dataset: str,
    data_dir: str | Path,
    split: str,
    limit: int | None = None,
    cases: list[str] | None = None,
):
    """Return ``(images, labels)``: images (N, C, H, W) float32 in [-1, 1], labels (N,) or None.

    Class labels exist for MNIST-like data only; CT returns ``None`` (its mask is channel 1).
    ``cases`` keeps only the CT slices of those patients (a low-data regime's training subset);
    a listed case that the split does not hold is a ``ValueError`` naming it.
    """
    if cases is not None and dataset not in CT:
        raise ValueError(f"cases select CT patients; {dataset!r} has none")
    if dataset in MNIST_LIKE:
        from pipeline.sanity.data import load_mnist_split

        images, labels = load_mnist_split(data_dir, split, limit=limit)
        return torch.from_numpy(images), torch.from_numpy(labels)
    if dataset in CT:
        from pipeline.io.shards import load_slices

        image, mask, meta = load_slices(data_dir, split)
        if cases is not None:
            missing = sorted(set(cases) - set(meta["case_id"].tolist()))
            if missing:
                raise ValueError(f"{data_dir}: split {split} has no case(s) {', '.join(missing)}")
            keep = np.isin(meta["case_id"], list(cases))
            image, mask = image[keep], mask[keep]
        # (N, 1, H, W) x 2 -> (N, 2, H, W); mask {0, 1} -> {-1, 1} to share the tanh range.
        pair = np.concatenate([image, mask.astype(np.float32) * 2.0 - 1.0], axis=1)
        if limit is not None:
            pair = pair[:limit]
        return torch.as_tensor(pair, dtype=torch.float32), None
    raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
