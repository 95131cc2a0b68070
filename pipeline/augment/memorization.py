"""Near-copy (memorization) check of synthetic slices against the training slices.

A generative model that reproduces a training slice leaks that patient's anatomy, and an
augmented training set that contains copies measures nothing new. The check follows the
nearest-neighbour test used for generative models of medical images (e.g. Akbar et al. 2023,
"Beware of diffusion models for synthesizing medical images", and the memorization ratio of
Carlini et al. 2023, "Extracting training data from diffusion models"): compare each synthetic
slice's distance to its nearest training slice with the same distance for *unseen real*
slices. Real test slices come from other patients (the split is patient-level), so their
distances to the training set are what "a new slice, not a copy" looks like.

Distance: Euclidean (L2) on the flattened image channel in [-1, 1] units, optionally after a
``downsample`` x ``downsample`` average pooling. Pooling makes the test insensitive to the
pixel noise a generator adds on top of a memorized slice, which would otherwise push an exact
copy plus noise far away at full resolution. The mask channel is left out: a copied image
with a redrawn mask is still a copy.

Threshold: the ``quantile`` of the real-test-to-train nearest-neighbour distances. Under the
null hypothesis "a synthetic slice is as novel as an unseen real slice", a share ``quantile``
of synthetic slices is flagged by chance, so a flagged share well above ``quantile`` is
memorization. Every function here is pure and batched: no (N x M) distance matrix larger
than ``batch_size x batch_size`` is ever built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F


def flatten_images(images: Any, downsample: int = 1) -> torch.Tensor:
    """Image channel of ``images`` (N, C, S, S) or (N, S, S), pooled, as float64 (N, D)."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, S, S), got shape {tuple(x.shape)}")
    if downsample < 1 or x.shape[-1] % downsample or x.shape[-2] % downsample:
        raise ValueError(f"downsample {downsample} must be >= 1 and divide {tuple(x.shape[2:])}")
    x = x[:, :1].double()
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)  # (N, 1, S, S) -> (N, 1, S/d, S/d)
    return x.flatten(1)  # (N, 1, s, s) -> (N, s * s), also for N = 0


def nearest_neighbours(
    queries: Any, reference: Any, batch_size: int = 256, downsample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of each query's nearest reference slice: ``(dist (N,), index (N,))``.

    Squared distances come from ``|q|^2 + |r|^2 - 2 q.r`` in float64, one
    ``batch_size x batch_size`` block at a time, keeping a running minimum. The reported
    distance is then recomputed directly for the chosen pair, so an exact copy reads exactly 0
    (the expanded form leaves rounding residue of order 1e-12 |q|^2).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    q, r = flatten_images(queries, downsample), flatten_images(reference, downsample)
    if len(r) == 0:
        raise ValueError("nearest_neighbours needs at least one reference image")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query and reference images differ in size: {q.shape[1]} vs {r.shape[1]}")
    r_sq = (r * r).sum(1)
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    index = torch.zeros(len(q), dtype=torch.int64)
    for qs in range(0, len(q), batch_size):
        qb = q[qs : qs + batch_size]
        qb_sq = (qb * qb).sum(1, keepdim=True)
        for rs in range(0, len(r), batch_size):
            d2 = qb_sq + r_sq[None, rs : rs + batch_size] - 2 * qb @ r[rs : rs + batch_size].T
            val, arg = d2.min(1)
            better = val < best[qs : qs + len(qb)]
            best[qs : qs + len(qb)] = torch.where(better, val, best[qs : qs + len(qb)])
            index[qs : qs + len(qb)] = torch.where(better, arg + rs, index[qs : qs + len(qb)])
    dist = (q - r[index]).norm(dim=1) if len(q) else torch.zeros(0, dtype=torch.float64)
    return dist.numpy(), index.numpy()


def near_copy_threshold(
    test: Any, train: Any, quantile: float, batch_size: int = 256, downsample: int = 1
) -> float:
    """The ``quantile`` of the real test slices' nearest-training-slice distances.

    A synthetic slice at or below it is closer to a training slice than all but a share
    ``quantile`` of unseen real slices are; non-decreasing in ``quantile`` (linear
    interpolation between order statistics, ``numpy.quantile``'s default).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    dist, _ = nearest_neighbours(test, train, batch_size, downsample)
    if len(dist) == 0:
        raise ValueError("near_copy_threshold needs at least one real test image")
    return float(np.quantile(dist, quantile))


def find_near_copies(
    synthetic: Any, train: Any, threshold: float, batch_size: int = 256, downsample: int = 1
) -> dict[str, Any]:
    """Flag synthetic slices whose nearest training slice lies within ``threshold``.

    Returns ``flags`` bool (N,), ``distances`` float (N,), ``nn_index`` int (N,) into ``train``,
    ``threshold`` and ``share`` (flagged fraction; 0.0 for an empty set). ``<=``, so an exact
    copy is flagged even when the threshold is 0.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    dist, index = nearest_neighbours(synthetic, train, batch_size, downsample)
    flags = dist <= threshold
    return {
        "flags": flags,
        "distances": dist,
        "nn_index": index,
        "threshold": float(threshold),
        "share": float(flags.mean()) if len(flags) else 0.0,
    }
