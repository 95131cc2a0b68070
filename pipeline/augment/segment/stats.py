"""Bootstrap confidence intervals over patients, for one condition and for paired differences.

The unit of resampling is the test patient: slices of one patient are correlated, so a CI over
slices would be far too narrow. Both functions use ``scipy.stats.bootstrap`` with
``method="percentile"`` (Efron & Tibshirani 1993, ch. 13): the (alpha/2, 1 - alpha/2) quantiles
of the resampled means. Percentile rather than BCa because BCa's jackknife acceleration is
undefined for the degenerate samples these experiments produce (every patient at Dice 0 early in
training, identical conditions in tests) and unstable for the ~10-20 patients of a test split.
A paired comparison is a one-sample bootstrap of the per-patient differences, which keeps the
pairing (both conditions resampled with the same patients) without ``paired=True`` machinery.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Return ``(mean, lo, hi)``: the mean of ``values`` and its percentile-bootstrap CI.

    NaNs (e.g. HD95 of a patient with no slice to measure) are dropped first. No finite value
    gives ``(nan, nan, nan)``; one value, or all equal, gives a zero-width interval (the
    bootstrap distribution is a point). Deterministic for a given ``seed``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    v = _clean(values)
    if v.size == 0:
        return (float("nan"),) * 3
    mean = float(v.mean())
    if v.size == 1 or np.all(v == v[0]):
        return mean, mean, mean
    res = stats.bootstrap(
        (v,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=1 - alpha,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return mean, float(lo), float(hi)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Return ``(mean, lo, hi)`` of the per-patient differences ``a - b`` with a bootstrap CI.

    ``a`` and ``b`` hold one value per patient in the same patient order (e.g. seed-averaged
    Dice of a condition and of real-only at the same fraction). Pairs where either value is NaN
    are dropped. Identical inputs give exactly ``(0, 0, 0)``.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    return bootstrap_ci(a - b, n_boot=n_boot, alpha=alpha, seed=seed)
