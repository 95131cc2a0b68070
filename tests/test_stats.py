"""Bootstrap CIs over patients (pipeline.augment.segment.stats): known answers, determinism,
pairing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.augment.segment.stats import bootstrap_ci, paired_difference


def test_ci_contains_mean_and_matches_normal_theory():
    v = np.random.default_rng(0).normal(0.7, 0.1, size=400)
    mean, lo, hi = bootstrap_ci(v, n_boot=4000, seed=1)
    assert mean == pytest.approx(v.mean())
    assert lo < mean < hi
    # For the mean of 400 normal values the 95% interval is mean +- 1.96 sd / sqrt(n).
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_ci_shrinks_with_more_patients():
    rng = np.random.default_rng(3)
    widths = []
    for n in (10, 100, 1000):
        _, lo, hi = bootstrap_ci(rng.uniform(0, 1, n), n_boot=2000, seed=0)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0
    # Width scales as 1/sqrt(n): a factor of ~sqrt(10) per step.
    assert widths[0] / widths[2] == pytest.approx(10.0, rel=0.35)


def test_ci_deterministic_for_a_seed():
    v = np.random.default_rng(5).uniform(size=30)
    assert bootstrap_ci(v, n_boot=1000, seed=7) == bootstrap_ci(v, n_boot=1000, seed=7)
    assert bootstrap_ci(v, n_boot=1000, seed=7) != bootstrap_ci(v, n_boot=1000, seed=8)


def test_ci_lower_confidence_is_narrower():
    v = np.random.default_rng(2).uniform(size=50)
    _, lo95, hi95 = bootstrap_ci(v, alpha=0.05, n_boot=2000)
    _, lo50, hi50 = bootstrap_ci(v, alpha=0.5, n_boot=2000)
    assert lo95 < lo50 < hi50 < hi95


def test_ci_nan_and_degenerate_inputs():
    assert bootstrap_ci([0.2, math.nan, 0.4], n_boot=500)[0] == pytest.approx(0.3)
    assert all(math.isnan(x) for x in bootstrap_ci([math.nan, math.nan]))
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([0.0] * 8) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1, 2], alpha=0)


def test_paired_difference_identical_is_exactly_zero():
    a = np.random.default_rng(1).uniform(size=12)
    assert paired_difference(a, a.copy()) == (0.0, 0.0, 0.0)


def test_paired_difference_keeps_the_pairing():
    # Patients differ a lot, the conditions barely: the paired CI must be far narrower than
    # either condition's own CI, and centred on the shift.
    rng = np.random.default_rng(4)
    base = rng.uniform(0.1, 0.9, size=20)
    shifted = base + 0.05 + rng.normal(0, 0.005, size=20)
    d, lo, hi = paired_difference(shifted, base, n_boot=2000)
    assert d == pytest.approx(0.05, abs=0.005)
    assert lo > 0.04 and hi < 0.06
    _, blo, bhi = bootstrap_ci(base, n_boot=2000)
    assert hi - lo < (bhi - blo) / 10


def test_paired_difference_drops_nan_pairs_and_checks_lengths():
    d, _, _ = paired_difference([1.0, math.nan, 3.0], [0.0, 5.0, 1.0], n_boot=500)
    assert d == pytest.approx(1.5)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
