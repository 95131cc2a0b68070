"""Sample-quality metrics of the paper: MMD, MS-SSIM diversity, mode coverage, FID, P/R.

All functions are pure (inputs are never modified, no state between calls) and return Python
floats or dicts of them. Images are (N, C, H, W) tensors in [-1, 1]; features are (N, D).
Likelihood metrics that need an encoder live in ``models/eval/likelihood.py``.
"""

from __future__ import annotations

import math
import warnings

import scipy.linalg
import torch
from monai.metrics import FIDMetric
from monai.metrics.regression import compute_ms_ssim

# Re-exported so every metric of the paper is reachable as ``models.eval.metrics.<name>``.
from models.eval.likelihood import (  # noqa: F401
    elbo_and_kl,
    iwae_bound,
    log_importance_weights,
    reconstruction_error,
)

# MS-SSIM for 32x32 images. Wang et al. (2003) use 5 scales and an 11-px window, which needs
# images of at least 176 px; MONAI refuses smaller ones. Three scales (32, 16, 8 px) with a
# 7-px Gaussian window (sigma 1.5 as in the original) is the most that fits: MONAI requires
# size // (scales - 1)**2 > kernel_size - 1, i.e. 32 // 4 = 8 > 6. The weights are the first
# three of Wang et al.'s, renormalised to sum to 1, so the coarse scales keep their ratio.
MS_SSIM_KERNEL_SIZE = 7
MS_SSIM_KERNEL_SIGMA = 1.5
_WANG_WEIGHTS = (0.0448, 0.2856, 0.3001)
MS_SSIM_WEIGHTS = tuple(w / sum(_WANG_WEIGHTS) for w in _WANG_WEIGHTS)
DATA_RANGE = 2.0  # images live in [-1, 1]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(len(x), -1).double()


def median_bandwidth(x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Median pairwise Euclidean distance of the pooled sample (the median heuristic).

    Gretton et al. (2012, section 8) set the Gaussian kernel width to the median distance
    between points of the aggregate sample; self-distances (zeros) are excluded. With ``y``
    omitted the median is taken over ``x`` alone (e.g. to fix sigma from real data once).
    """
    z = _flat(x) if y is None else torch.cat([_flat(x), _flat(y)])
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    return float(d[iu[0], iu[1]].median())


def _rbf(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))


def mmd(
    x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None, *, biased: bool = False
) -> float:
    """Squared MMD between samples ``x`` (m, ...) and ``y`` (n, ...), flattened per image.

    Unbiased estimator MMD²_u of Gretton et al. (2012, JMLR, eq. 3) with the Gaussian kernel
    k(a, b) = exp(-||a - b||² / (2 sigma²)) on raw pixels ([-1, 1] units); ``bandwidth`` is sigma,
    and ``None`` selects the median heuristic (:func:`median_bandwidth`). Dimensionless; it can
    be slightly negative when the distributions agree. ``biased=True`` gives MMD²_b (eq. 5),
    which keeps the diagonal terms and is exactly 0 for ``mmd(x, x)``. The paper's tables print
    the value x 1e4.

    MONAI's ``MMDMetric`` implements the same estimator with a *linear* kernel only, which
    compares means and nothing else; the Gaussian kernel is characteristic (all moments).
    """
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"mmd: sample shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"mmd needs at least 2 samples on each side, got {m} and {n}")
    sigma = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"mmd bandwidth must be positive, got {sigma}")
    a, b = _flat(x), _flat(y)
    kxx, kyy, kxy = _rbf(a, a, sigma), _rbf(b, b, sigma), _rbf(a, b, sigma)
    return float(_mmd2_from_kernels(kxx, kyy, kxy, biased))


def _mmd2_from_kernels(kxx, kyy, kxy, biased: bool) -> torch.Tensor:
    m, n = len(kxx), len(kyy)
    if biased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    # The unbiased estimator drops the i == j terms, whose kernel value is always 1.
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sxx + syy - 2 * kxy.mean()


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pair MS-SSIM (N,) of images ``x`` and ``y`` (N, C, 32, 32) in [-1, 1].

    MONAI's ``compute_ms_ssim`` (Wang et al. 2003) with the 3-scale, 7-px setting documented at
    ``MS_SSIM_WEIGHTS``; 1 means identical, dimensionless.
    """
    if x.shape != y.shape:
        raise ValueError(f"ms_ssim: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    out = compute_ms_ssim(
        x.detach().float(),
        y.detach().float(),
        spatial_dims=2,
        data_range=DATA_RANGE,
        kernel_size=MS_SSIM_KERNEL_SIZE,
        kernel_sigma=MS_SSIM_KERNEL_SIGMA,
        weights=MS_SSIM_WEIGHTS,
    )
    return out.reshape(-1)


def ms_ssim_diversity(
    x: torch.Tensor, n_pairs: int, generator: torch.Generator, batch_size: int = 1024
) -> float:
    """Mean MS-SSIM over ``n_pairs`` random pairs of distinct samples of ``x``.

    Odena et al. (2017, "Conditional Image Synthesis with Auxiliary Classifier GANs", sec. 4.2)
    use it to measure diversity: lower = more diverse; a collapsed generator scores near 1.
    Pairs are drawn with replacement over pairs but never pair an image with itself.
    """
    if len(x) < 2:
        raise ValueError(f"ms_ssim_diversity needs at least 2 images, got {len(x)}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    i = torch.randint(len(x), (n_pairs,), generator=generator)
    # Adding an offset in [1, N) modulo N gives a uniformly random *other* image.
    j = (i + torch.randint(1, len(x), (n_pairs,), generator=generator)) % len(x)
    vals = [
        ms_ssim(x[i[s : s + batch_size]], x[j[s : s + batch_size]])
        for s in range(0, n_pairs, batch_size)
    ]
    return float(torch.cat(vals).mean())


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # 0 log 0 = 0: xlogy returns 0 where p == 0. ``0 - sum`` rather than ``-sum``: a one-class
    # histogram then gives +0.0, not the -0.0 that JSON would print.
    return 0.0 - torch.special.xlogy(p, p).sum(dim)


def mode_coverage(probs: torch.Tensor) -> dict:
    """Mode coverage of generated samples from classifier probabilities ``probs`` (N, K).

    After Mi et al. (2018, "A Probe Towards Understanding GAN and VAE Models"): ``class_entropy``
    is the entropy (nats) of the histogram of argmax classes, log K when every mode is hit
    equally often and 0 when all samples fall in one class; ``mean_image_entropy`` is the mean
    per-image predictive entropy (nats), low when each sample is a confident, sharp member of a
    class. ``histogram`` holds the per-class counts and ``modes_covered`` the non-empty classes.
    """
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"probs must be (N, K) with N > 0, got {tuple(probs.shape)}")
    p = probs.detach().double()
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(len(p), dtype=p.dtype), atol=1e-4):
        raise ValueError("probs rows must be probability vectors (non-negative, summing to 1)")
    counts = torch.bincount(p.argmax(1), minlength=p.shape[1])
    return {
        "class_entropy": float(_entropy(counts.double() / counts.sum())),
        "max_class_entropy": math.log(p.shape[1]),
        "mean_image_entropy": float(_entropy(p, 1).mean()),
        "histogram": counts.tolist(),
        "modes_covered": int((counts > 0).sum()),
    }


def entropy_collapse(trajectory: list[float], drop: float, labels: list[str] | None = None) -> dict:
    """Flag mode collapse from a run's normalised class-entropy trajectory (0..1, oldest first).

    ``trajectory`` holds ``class_entropy / log K`` (:func:`mode_coverage`) of the samples saved
    during training. Collapsed when a value falls more than ``drop`` below the best earlier one:
    diversity lost while training (Goodfellow 2016, "NIPS 2016 Tutorial: GANs", sec. 5.1.1),
    transient or lasting. A run that is never diverse is not flagged here; its final class
    entropy says so. Returns ``collapsed``, ``reason`` (None or a sentence naming the snapshot
    by its entry of ``labels``, default "snapshot <0-based index>") and ``largest_drop``.
    """
    if not trajectory:
        raise ValueError("an entropy trajectory needs at least one snapshot")
    best, largest, at = trajectory[0], 0.0, None
    for i, value in enumerate(trajectory[1:], start=1):
        if best - value > largest:
            largest, at = best - value, i
        best = max(best, value)
    collapsed = largest > drop
    names = labels or [f"snapshot {i}" for i in range(len(trajectory))]
    reason = f"fell {largest:.3f} below its earlier best at {names[at]}" if collapsed else None
    return {"collapsed": collapsed, "reason": reason, "largest_drop": largest}


def fid(feats_real: torch.Tensor, feats_fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6).

    MONAI's ``FIDMetric`` on the in-domain classifier's penultimate features, not Inception
    pool3: values are in squared feature units and are NOT comparable with published FIDs.
    """
    if feats_real.ndim != 2 or feats_fake.shape[1:] != feats_real.shape[1:]:
        raise ValueError(
            f"fid: expected (N, D) features of equal D, got {tuple(feats_real.shape)} "
            f"and {tuple(feats_fake.shape)}"
        )
    if min(len(feats_real), len(feats_fake)) < 2:
        raise ValueError("fid needs at least 2 feature vectors per set")
    with warnings.catch_warnings():
        # MONAI passes scipy's deprecated `disp` argument to sqrtm; the result is unaffected.
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        # Dead ReLU units make the covariances singular and scipy warns; on the classifier's
        # features the result agrees with an eigendecomposition-based sqrt to 1e-6 relative.
        warnings.filterwarnings("ignore", category=scipy.linalg.LinAlgWarning)
        return float(FIDMetric()(feats_fake.detach(), feats_real.detach()))


def _knn_radii(feats: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest *other* row (N,)."""
    if len(feats) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    # k + 1 smallest includes the point itself at distance 0.
    return torch.cat(
        [
            torch.cdist(feats[s : s + batch_size], feats).kthvalue(k + 1, dim=1).values
            for s in range(0, len(feats), batch_size)
        ]
    )


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, query: torch.Tensor, bs: int) -> float:
    """Share of ``query`` inside the union of balls (manifold_i, radii_i): Kynkäänniemi eq. 1."""
    inside = [
        (torch.cdist(query[s : s + bs], manifold) <= radii[None]).any(1)
        for s in range(0, len(query), bs)
    ]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    feats_real: torch.Tensor, feats_fake: torch.Tensor, k: int = 3, batch_size: int = 1024
) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2).

    Each set's manifold is the union of balls around its points with radius the distance to the
    k-th nearest neighbour. Precision = share of fake samples inside the real manifold (quality);
    recall = share of real samples inside the fake manifold (coverage). Both in [0, 1].
    """
    if feats_real.ndim != 2 or feats_fake.shape[1:] != feats_real.shape[1:]:
        raise ValueError(
            f"precision_recall: expected (N, D) features of equal D, got "
            f"{tuple(feats_real.shape)} and {tuple(feats_fake.shape)}"
        )
    real, fake = feats_real.detach().double(), feats_fake.detach().double()
    r_real, r_fake = _knn_radii(real, k, batch_size), _knn_radii(fake, k, batch_size)
    return {
        "precision": _coverage(real, r_real, fake, batch_size),
        "recall": _coverage(fake, r_fake, real, batch_size),
    }
