"""The in-domain feature network behind FID and precision/recall of synthetic CT slices.

Why not Inception: pretrained ImageNet or RadImageNet weights are not available offline, and an
ImageNet network mostly responds to texture, not to where organs sit. So the network is trained
inside the pipeline on the real *training* split's image channel, with a self-supervised pretext
task that needs nothing beyond the images every source has: predict which of the 8 dihedral
transforms (4 rotations by 90 degrees, each with or without a left-right mirror) was applied
(Gidaris, Singh & Komodakis, ICLR 2018, "Unsupervised representation learning by predicting
image rotations", extended from 4 rotations to the dihedral group D4).

On axial CT slices the task can only be solved by knowing the anatomy's layout: the body
outline is wider than tall (90-degree turns), the spine and table lie posterior (bottom: rows
run anterior -> posterior, so 0 vs 180 degrees) and the liver lies on the patient's right
(viewer's left: the mirror). A synthetic slice whose anatomy sits in the wrong place therefore
lands away from the real slices in this feature space, which is what FID and precision/recall
should detect. The features are the post-ReLU penultimate activations, as for the MNIST
classifier in ``models/eval/classifier.py``; that network is hard-wired to 32x32 and a flattened
FC, so this one ends in global average pooling and works at any size from 32 to 256 px.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.base import batched
from models.eval.classifier import fit_adam_cosine, num_threads

N_TRANSFORMS = 8  # the dihedral group D4: rotation k % 4 (x 90 degrees), mirror when k >= 4


class CtFeatureNet(nn.Module):
    """Conv blocks (3x3 conv, ReLU, 2x max-pool) -> global average pool -> FC features -> 8 logits.

    No normalisation layers: a slice's features then depend on that slice alone (not on the
    batch or running statistics), and absolute intensity is not normalised away.
    """

    def __init__(self, channels: Sequence[int] = (8, 16, 32, 64), feature_dim: int = 64):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or feature_dim < 1:
            raise ValueError(
                f"channels and feature_dim must be positive, got {channels}, {feature_dim}"
            )
        self.config = {"channels": channels, "feature_dim": int(feature_dim)}
        self.trained_size: int | None = None  # set by load_feature_net from the checkpoint
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            # (B, c_in, H, W) -> (B, c, H/2, W/2)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, feature_dim)
        self.head = nn.Linear(feature_dim, N_TRANSFORMS)

    @property
    def min_size(self) -> int:
        """Smallest image side the pooling stack accepts (one pixel left after the last pool)."""
        return 2 ** len(self.config["channels"])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) in [-1, 1] -> (B, feature_dim) post-ReLU penultimate activations."""
        h = self.conv(x).mean(dim=(2, 3))  # (B, c, S', S') -> (B, c): global average pool
        return F.relu(self.fc(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, 8) logits over the dihedral transforms."""
        return self.head(self.features(x))


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply element ``k`` (0..7) of D4 to the last two axes: mirror if ``k >= 4``, then rotate.

    Rotation is ``torch.rot90`` by ``k % 4`` quarter turns; the mirror flips columns (patient
    right <-> left). All 8 results differ for a generic image.
    """
    if not 0 <= k < N_TRANSFORMS:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def image_channel(images: Any) -> torch.Tensor:
    """Float32 tensor (N, 1, S, S) of the image channel of ``images`` (N, C, S, S) or (N, S, S)."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square images (N, C, S, S), got {tuple(x.shape)}")
    return x[:, :1].float()


def _check(model: CtFeatureNet, x: torch.Tensor) -> None:
    if x.shape[-1] < model.min_size:
        raise ValueError(
            f"images of {x.shape[-1]} px are too small for {len(model.config['channels'])} "
            f"pooling blocks (need >= {model.min_size} px)"
        )


def transformed_batch(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return ``x`` (B, 1, S, S) with transform ``labels[i]`` applied to sample ``i``."""
    out = torch.empty_like(x)
    for k in range(N_TRANSFORMS):
        sel = labels == k
        if sel.any():
            out[sel] = dihedral(x[sel], k)
    return out


def train_feature_net(
    images: Any,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    channels: Sequence[int] = (8, 16, 32, 64),
    feature_dim: int = 64,
    threads: int | None = 1,
) -> CtFeatureNet:
    """Train a fresh network on the dihedral pretext task over ``images``; eval mode out.

    Each step draws ``batch_size`` slices and one uniformly random transform per slice
    (cross-entropy over the 8 classes; chance accuracy 1/8). Adam with a cosine decay to zero,
    the loop of the MNIST classifier (``models.eval.classifier.fit_adam_cosine``); a seeded
    generator draws batches and transforms, so the same seed gives the same weights on the same
    machine and thread count.
    """
    x = image_channel(images)
    if len(x) < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"need images, steps >= 1 and batch_size >= 1 (got {len(x)} images)")
    with num_threads(threads):
        torch.manual_seed(seed)
        model = CtFeatureNet(channels, feature_dim)
        _check(model, x)
        gen = torch.Generator().manual_seed(seed)

        def batch_loss() -> torch.Tensor:
            idx = torch.randint(len(x), (batch_size,), generator=gen)
            labels = torch.randint(N_TRANSFORMS, (batch_size,), generator=gen)
            return F.cross_entropy(model(transformed_batch(x[idx], labels)), labels)

        return fit_adam_cosine(model, steps, lr, batch_loss)


def features(model: CtFeatureNet, images: Any, batch_size: int = 256) -> torch.Tensor:
    """Penultimate activations (N, feature_dim) of the image channel of ``images``."""
    x = image_channel(images)
    _check(model, x)
    return batched(model, x, model.features, batch_size)


def pretext_accuracy(model: CtFeatureNet, images: Any, batch_size: int = 256) -> dict[str, float]:
    """Accuracy on every slice under all 8 transforms (deterministic, no sampling).

    Returns ``accuracy`` (all 8 classes right; chance 0.125), ``rotation`` (k % 4 right;
    chance 0.25) and ``mirror`` (k >= 4 right; chance 0.5). The mirror is the hard part: only
    the left-right asymmetry of the anatomy (liver, stomach, spleen) gives it away.
    """
    x = image_channel(images)
    if len(x) == 0:
        raise ValueError("pretext_accuracy needs at least one image")
    _check(model, x)  # the transforms keep the (square) size
    hits = {"accuracy": 0, "rotation": 0, "mirror": 0}
    for k in range(N_TRANSFORMS):
        pred = batched(model, dihedral(x, k), lambda b: model(b).argmax(1), batch_size)
        hits["accuracy"] += int((pred == k).sum())
        hits["rotation"] += int((pred % 4 == k % 4).sum())
        hits["mirror"] += int(((pred >= 4) == (k >= 4)).sum())
    return {name: n / (N_TRANSFORMS * len(x)) for name, n in hits.items()}


def save_feature_net(path: str | os.PathLike, model: CtFeatureNet, extra: dict | None = None):
    """``torch.save`` the weights with the config that rebuilds the network (and ``extra``)."""
    torch.save({"config": model.config, "state_dict": model.state_dict(), **(extra or {})}, path)


def load_feature_net(
    path: str | os.PathLike,
    channels: Sequence[int] | None = None,
    feature_dim: int | None = None,
) -> CtFeatureNet:
    """Rebuild a network from ``path``, in eval mode; ``ValueError`` naming the file if unusable.

    ``path`` holds either a checkpoint of :func:`save_feature_net` (its stored config wins) or a
    bare ``state_dict`` of a :class:`CtFeatureNet`, which is then built with ``channels`` and
    ``feature_dim`` (the params the caller would have trained with).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable torch file ({exc})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and "config" in obj:
        cfg, state = obj["config"], obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        if channels is None or feature_dim is None:
            raise ValueError(f"{path}: a bare state dict needs channels and feature_dim")
        cfg, state = {"channels": list(channels), "feature_dim": feature_dim}, obj
    else:
        raise ValueError(f"{path}: neither a feature-net checkpoint nor a state dict")
    try:
        model = CtFeatureNet(cfg["channels"], cfg["feature_dim"])
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: weights do not fit CtFeatureNet(channels={cfg.get('channels')}, "
            f"feature_dim={cfg.get('feature_dim')}): {str(exc).splitlines()[0]}"
        ) from None
    # The slice size the network was trained at, when the checkpoint records it (else None).
    model.trained_size = obj.get("size") if "config" in obj else None
    return model.eval()
