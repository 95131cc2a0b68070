"""The in-domain classifier that scores generated MNIST / Fashion-MNIST images.

Its class probabilities feed the mode-coverage metrics (Mi et al. 2018) and its penultimate
activations replace Inception features for FID and precision/recall: an in-domain network sees
digit shape, an ImageNet one mostly sees texture it was never trained on for 32x32 greyscale.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from models.base import batched

N_CLASSES = 10


class MnistClassifier(nn.Module):
    """Two conv blocks -> FC ``feature_dim`` (penultimate, the features) -> FC 10 logits."""

    def __init__(self, channels: tuple[int, int] = (16, 32), feature_dim: int = 128):
        super().__init__()
        c1, c2 = channels
        self.config = {"channels": [c1, c2], "feature_dim": feature_dim}
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, 32, 32) -> (B, c1, 16, 16)
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, 16, 16) -> (B, c2, 8, 8)
        )
        self.fc = nn.Linear(c2 * 8 * 8, feature_dim)
        self.head = nn.Linear(feature_dim, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) in [-1, 1] -> (B, feature_dim) post-ReLU penultimate activations."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) -> (B, 10) logits."""
        return self.head(self.features(x))


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32):
        raise ValueError(f"expected images of shape (N, 1, 32, 32), got {tuple(x.shape)}")


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (``None``: leave as is), then restore.

    Batch-64 convolutions on 32x32 images are too small to split across threads, and when the
    cores are shared OpenMP workers spin-wait on each other: on two busy cores one thread
    trains the default classifier about six times faster than two.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    channels: tuple[int, int] = (16, 32),
    feature_dim: int = 128,
    threads: int | None = 1,
) -> MnistClassifier:
    """Train a fresh classifier on ``x`` (N, 1, 32, 32) and labels ``y`` (N,); eval mode out.

    Adam with a cosine decay to zero: a fixed step budget then ends on a small learning rate
    without a tuned schedule. Mini-batches are drawn with a seeded generator, so the same seed
    gives the same weights on the same machine and thread count.
    """
    with num_threads(threads):
        return _train(x, y, steps, batch_size, lr, seed, channels, feature_dim)


def fit_adam_cosine(
    model: nn.Module, steps: int, lr: float, batch_loss: Callable[[], torch.Tensor]
) -> nn.Module:
    """Train ``model`` for ``steps`` steps on ``batch_loss()``; returned in eval mode.

    Adam with the learning rate decayed by a cosine from ``lr`` to zero (``LambdaLR``): a fixed
    step budget then ends on a small learning rate without a tuned schedule. ``batch_loss``
    draws the step's batch (from its own seeded generator) and returns the scalar loss.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    for _ in range(steps):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of seeded permutations of range(n), reshuffled when a batch would overrun."""
    perm, pos = torch.randperm(n, generator=gen), 0
    while True:
        if pos + batch_size > n:  # epoch boundary: reshuffle
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


def _train(x, y, steps, batch_size, lr, seed, channels, feature_dim) -> MnistClassifier:
    _check_images(x)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    torch.manual_seed(seed)
    model = MnistClassifier(tuple(channels), feature_dim)
    batches = _epoch_batches(len(x), batch_size, torch.Generator().manual_seed(seed))

    def batch_loss() -> torch.Tensor:
        idx = next(batches)
        return F.cross_entropy(model(x[idx]), y[idx])

    return fit_adam_cosine(model, steps, lr, batch_loss)


def features(model: MnistClassifier, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate activations (N, feature_dim), the in-domain stand-in for Inception pool3."""
    _check_images(x)
    return batched(model, x, model.features, batch_size, to_model_device=True)


def predict_proba(model: MnistClassifier, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class probabilities (N, 10) (softmax of the logits)."""
    _check_images(x)

    def proba(b: torch.Tensor) -> torch.Tensor:
        return F.softmax(model(b), dim=1)

    return batched(model, x, proba, batch_size, to_model_device=True)


def accuracy(model: MnistClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose most probable class equals ``y``."""
    return float((predict_proba(model, x).argmax(1) == y).float().mean())


def save_classifier(path: str | os.PathLike, model: MnistClassifier, extra: dict | None = None):
    """``torch.save`` the weights with the config that rebuilds the network (and ``extra``)."""
    torch.save({"config": model.config, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_classifier(path: str | os.PathLike, map_location: Any = "cpu") -> MnistClassifier:
    """Rebuild the classifier stored by :func:`save_classifier`, in eval mode."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    try:
        cfg = ckpt["config"]
        model = MnistClassifier(tuple(cfg["channels"]), cfg["feature_dim"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a classifier checkpoint ({exc})") from exc
    return model.eval()
