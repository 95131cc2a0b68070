"""Shared helpers of the segmentation control and recipe tests (tests/test_segment_*.py).

Built on tests/test_segment.py's fakes: 16 px slices with a 4x4 bright 'pancreas'. Exact
answers come from hand-built slices and a fixed segmenter (``image > 0``), never from a trained
network.
"""

from __future__ import annotations

import numpy as np
import torch

import pipeline.augment.segment.recipes as recipes
from common.atomic import write_json
from pipeline.augment.segment.train import TrainResult
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter
from tests.test_segment import SIZE, SPLITS, TRAIN, write_folder

QUIET = {"log": lambda _: None}


def write_synthetic(root, image, mask, trained_on=TRAIN):
    """A ``gvae generate``-style folder holding exactly ``image``/``mask`` (case ``syn-gvae``)."""
    writer = ShardWriter(root / "synthetic", shard_size=64, prefix="synthetic/")
    writer.add(image.astype(np.float32), mask.astype(np.uint8), "syn-gvae", np.arange(len(image)))
    n = len(image)
    entry = {"cases": ["syn-gvae"], "shards": writer.close(), "slices": n, "positive": n,
             "negative": 0}  # fmt: skip
    write_json(root / INDEX_NAME, {
        "format": FORMAT, "size": SIZE, "pixel_mm": 2.0, "fov_mm": 2.0 * SIZE,
        "window": {"level": 40, "width": 400}, "axes": {}, "splits": {"synthetic": entry},
        "cases": {"syn-gvae": {"split": "synthetic", "n_slices": n, "positive": n}},
        "skipped": [], "source": {"model": "gvae", "trained_on": list(trained_on)},
    })  # fmt: skip
    return root


class FixedSegmenter(torch.nn.Module):
    """Predicts ``image > 0``: a segmenter whose Dice on a hand-built slice is known exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))  # predict() reads the device from it

    def forward(self, x):
        return 10.0 * x * self.w


def scored_slices():
    """Six slices with the fixed segmenter's Dice 1, 2/3, 0.5, 0.4, 0, 1 (both empty)."""
    image = np.full((6, 1, SIZE, SIZE), -1.0, np.float32)
    mask = np.zeros((6, 1, SIZE, SIZE), np.uint8)
    mask[:5, 0, 4:8, 4:8] = 1  # 16 px each
    image[0, 0, 4:8, 4:8] = 0.6  # P = M                       -> 1
    image[1, 0, 4:6, 4:8] = 0.6  # 8 px inside M                -> 16 / 24
    image[2, 0, 6:10, 4:8] = 0.6  # 16 px, 8 of them in M       -> 16 / 32
    image[3, 0, 4:5, 4:8] = 0.6  # 4 px inside M                -> 8 / 20
    image[4, 0, 10:14, 10:14] = 0.6  # disjoint                 -> 0
    return image, mask, np.array([1.0, 2 / 3, 0.5, 0.4, 0.0, 1.0])


def fixed_filter(monkeypatch, calls):
    """The filter's UNet training replaced by the fixed segmenter; its inputs recorded."""

    def fake_train(image, mask, augment, params, seed, mixer=None):
        calls.append({"image": image.copy(), "augment": augment.copy(), "seed": seed})
        return TrainResult(FixedSegmenter(), 0.0, 0.0, (params.steps,))

    monkeypatch.setattr(recipes, "train_segmenter", fake_train)


def real_and_synthetic(tmp_path):
    """A real slices folder (tests/test_segment.py's splits) and a 10-slice synthetic one."""
    real = write_folder(tmp_path / "slices", SPLITS)
    syn = write_folder(tmp_path / "syn", {"synthetic": ["syn-gvae"]}, per_case=10,
                       source={"model": "gvae", "trained_on": TRAIN}, seed=1)  # fmt: skip
    return real, syn
