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
memorization.

Relative distance (Carlini et al. 2023, Sec. 5.1, their CIFAR-10 definition with alpha = 0.5
and n = 50): ``d_1 / mean(d_1 .. d_n)`` over a slice's ``n`` nearest training slices. A copy is
much closer to its source than to the next training slices (ratio near 0); a blurred, average
slice is about equally far from all of them (ratio near 1). The absolute threshold alone flags
blur: on the real-slice cohort it flagged 98% of the VAE's samples, whose grids show smooth
averages, not copies. A slice is therefore flagged only when it passes both tests; ``ratio``
1 turns the relative test off (``d_1`` never exceeds the mean).

Every function here is pure and batched: no (N x M) distance matrix larger than
``batch_size x batch_size`` is ever built.
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


def k_nearest(
    queries: Any, reference: Any, k: int = 1, batch_size: int = 256, downsample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to and indices of each query's ``k`` nearest reference slices, nearest first:
    ``(dist (N, k'), index (N, k'))`` with ``k' = min(k, len(reference))``.

    Squared distances come from ``|q|^2 + |r|^2 - 2 q.r`` in float64, one
    ``batch_size x batch_size`` block at a time, keeping a running top-k. The nearest distance
    is then recomputed directly for its pair, so an exact copy reads exactly 0 (the expanded
    form leaves rounding residue of order 1e-12 |q|^2).
    """
    if batch_size < 1 or k < 1:
        raise ValueError(f"batch_size and k must be >= 1, got {batch_size} and {k}")
    q, r = flatten_images(queries, downsample), flatten_images(reference, downsample)
    if len(r) == 0:
        raise ValueError("the nearest-neighbour search needs at least one reference image")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query and reference images differ in size: {q.shape[1]} vs {r.shape[1]}")
    k = min(k, len(r))
    r_sq = (r * r).sum(1)
    best = torch.full((len(q), k), float("inf"), dtype=torch.float64)
    index = torch.zeros((len(q), k), dtype=torch.int64)
    for qs in range(0, len(q), batch_size):
        qb, rows = q[qs : qs + batch_size], slice(qs, qs + batch_size)
        qb_sq = (qb * qb).sum(1, keepdim=True)
        for rs in range(0, len(r), batch_size):
            d2 = qb_sq + r_sq[None, rs : rs + batch_size] - 2 * qb @ r[rs : rs + batch_size].T
            ids = torch.arange(rs, rs + d2.shape[1]).expand_as(d2)
            # (b, k) kept + (b, block) new -> (b, k) smallest, ascending
            val, arg = torch.cat([best[rows], d2], 1).topk(k, dim=1, largest=False, sorted=True)
            index[rows] = torch.cat([index[rows], ids], 1).gather(1, arg)
            best[rows] = val
    dist = best.clamp_min(0.0).sqrt()
    if len(q):
        dist[:, 0] = (q - r[index[:, 0]]).norm(dim=1)
    return dist.numpy(), index.numpy()


def nearest_neighbours(
    queries: Any, reference: Any, batch_size: int = 256, downsample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of each query's nearest reference slice: ``(dist (N,), index (N,))``
    (``k_nearest`` with k = 1; an exact copy reads exactly 0)."""
    dist, index = k_nearest(queries, reference, 1, batch_size, downsample)
    return dist[:, 0], index[:, 0]


def relative_distance(dist: np.ndarray) -> np.ndarray:
    """``d_1 / mean(d_1 .. d_n)`` per row of ascending distances ``(N, n)`` (Carlini et al.
    2023, Sec. 5.1, without their alpha): 0 for an exact copy, 1 when the nearest training slice
    is no closer than the other n - 1. A row of zeros (a copy of a slice repeated n times)
    reads 0."""
    dist = np.asarray(dist, np.float64)
    mean = dist.mean(1) if dist.shape[1] else np.zeros(len(dist))
    return np.divide(dist[:, 0], mean, out=np.zeros(len(dist)), where=mean > 0)


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
    synthetic: Any,
    train: Any,
    threshold: float,
    batch_size: int = 256,
    downsample: int = 1,
    ratio: float = 1.0,
    neighbours: int = 50,
) -> dict[str, Any]:
    """Flag synthetic slices whose nearest training slice lies within ``threshold`` and whose
    ``relative_distance`` over their ``neighbours`` nearest training slices is at most
    ``ratio`` (1: the absolute test alone).

    Returns ``flags`` bool (N,), ``distances`` float (N,), ``relative`` float (N,), ``nn_index``
    int (N,) into ``train``, ``threshold``, ``ratio``, ``neighbours`` (as used: at most the
    training set's size) and ``share`` (flagged fraction; 0.0 for an empty set). ``<=``, so an
    exact copy is flagged even when the threshold is 0.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    dist, index = k_nearest(synthetic, train, neighbours, batch_size, downsample)
    relative = relative_distance(dist)
    flags = (dist[:, 0] <= threshold) & (relative <= ratio)
    return {
        "flags": flags,
        "distances": dist[:, 0],
        "relative": relative,
        "nn_index": index[:, 0],
        "threshold": float(threshold),
        "ratio": float(ratio),
        "neighbours": int(dist.shape[1]),
        "share": float(flags.mean()) if len(flags) else 0.0,
    }
