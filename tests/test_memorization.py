"""Near-copy check: exact nearest neighbours, planted copies flagged, noise not, threshold order."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.augment.quality.memorization import (
    find_near_copies,
    flatten_images,
    k_nearest,
    near_copy_threshold,
    nearest_neighbours,
    relative_distance,
)


def smooth_slices(n: int, seed: int, size: int = 16) -> np.ndarray:
    """``n`` smooth random images (N, 2, S, S) in [-1, 1]: image channel + a dummy mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 2, size, size), np.float32)
    for i in range(n):
        f = rng.uniform(0.5, 2.5, 2)
        p = rng.uniform(0, 2 * np.pi, 2)
        out[i, 0] = (
            0.6 * np.sin(2 * np.pi * f[0] * xx + p[0]) * np.cos(2 * np.pi * f[1] * yy + p[1])
        )
        out[i, 1] = out[i, 0] > 0.3
    return out


def test_nearest_neighbours_match_brute_force_across_blocks():
    q, r = smooth_slices(11, 0), smooth_slices(17, 1)
    for downsample in (1, 2):
        fq, fr = flatten_images(q, downsample).numpy(), flatten_images(r, downsample).numpy()
        full = np.linalg.norm(fq[:, None] - fr[None], axis=2)
        # batch_size 4 splits both sides into several blocks, with ragged last ones.
        dist, index = nearest_neighbours(q, r, batch_size=4, downsample=downsample)
        np.testing.assert_array_equal(index, full.argmin(1))
        np.testing.assert_allclose(dist, full.min(1), rtol=1e-10)
    assert flatten_images(q, 2).shape == (11, 8 * 8)


def test_k_nearest_match_brute_force_across_blocks():
    q, r = smooth_slices(9, 10), smooth_slices(23, 11)
    fq, fr = flatten_images(q, 2).numpy(), flatten_images(r, 2).numpy()
    full = np.linalg.norm(fq[:, None] - fr[None], axis=2)
    order = np.argsort(full, axis=1)[:, :6]
    dist, index = k_nearest(q, r, k=6, batch_size=4, downsample=2)
    np.testing.assert_array_equal(index, order)
    np.testing.assert_allclose(dist, np.take_along_axis(full, order, 1), rtol=1e-9)
    # k above the reference size: every reference slice, nearest first.
    dist, index = k_nearest(q, r[:3], k=50, batch_size=2)
    assert dist.shape == (9, 3) and (np.diff(dist, axis=1) >= 0).all()


def test_relative_distance_known_values():
    d = np.array([[0.0, 1.0, 2.0], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(relative_distance(d), [0.0, 1.0, 0.5, 0.0])


def test_mask_channel_is_ignored():
    q = smooth_slices(3, 2)
    other_mask = q.copy()
    other_mask[:, 1] = 1 - other_mask[:, 1]
    dist, index = nearest_neighbours(other_mask, q)
    np.testing.assert_array_equal(dist, 0.0)
    np.testing.assert_array_equal(index, [0, 1, 2])


def test_planted_copy_is_flagged_and_noise_is_not():
    train, test = smooth_slices(40, 3), smooth_slices(30, 4)
    threshold = near_copy_threshold(test, train, quantile=0.05)
    rng = np.random.default_rng(5)
    noise = rng.uniform(-1, 1, (10, 2, 16, 16)).astype(np.float32)
    synthetic = np.concatenate([train[[7, 21]], noise, smooth_slices(10, 6)])
    out = find_near_copies(synthetic, train, threshold, batch_size=8)
    assert out["flags"][:2].all() and not out["flags"][2:12].any()
    np.testing.assert_array_equal(out["distances"][:2], 0.0)  # exactly 0, not rounding residue
    np.testing.assert_array_equal(out["nn_index"][:2], [7, 21])
    assert out["threshold"] == threshold > 0
    assert out["share"] == pytest.approx(out["flags"].mean()) and out["share"] >= 2 / 22
    # A copy with generator-like pixel noise stays flagged once pooled 2x2.
    noisy_copy = train[[9]] + rng.normal(0, 0.05, train[[9]].shape).astype(np.float32)
    t2 = near_copy_threshold(test, train, 0.05, downsample=2)
    assert find_near_copies(noisy_copy, train, t2, downsample=2)["flags"].all()


def test_relative_test_passes_a_blurred_average_but_not_a_copy():
    """A smooth average of the training slices is nearer to some training slice than unseen
    real slices are, so the absolute test alone calls it a copy; it is about equally far from
    all of them, which the relative test (Carlini et al. 2023) sees. Copies stay flagged."""
    # Like CT: an anatomy every slice shares, plus a smaller part of its own in every slice.
    rng = np.random.default_rng(14)
    base = smooth_slices(1, 15)
    train = base + np.float32(0.2) * rng.normal(size=(60, 2, 16, 16)).astype(np.float32)
    test = base + np.float32(0.2) * rng.normal(size=(40, 2, 16, 16)).astype(np.float32)
    blur = train.mean(0, keepdims=True)
    noisy_copy = train[[5]] + rng.normal(0, 0.05, train[[5]].shape).astype(np.float32)
    t = near_copy_threshold(test, train, 0.05, downsample=2)
    absolute = find_near_copies(blur, train, t, downsample=2)  # ratio 1: the test is off
    assert absolute["flags"].all() and absolute["relative"][0] > 0.7
    both = find_near_copies(np.concatenate([blur, noisy_copy, train[[9]]]), train, t, 256, 2, 0.5)
    assert both["flags"].tolist() == [False, True, True]
    assert both["relative"][2] == 0.0 and both["ratio"] == 0.5 and both["neighbours"] == 50


def test_threshold_is_monotone_in_quantile():
    train, test = smooth_slices(30, 7), smooth_slices(25, 8)
    qs = [0.0, 0.01, 0.05, 0.2, 0.5, 1.0]
    ts = [near_copy_threshold(test, train, q) for q in qs]
    assert ts == sorted(ts) and ts[0] < ts[-1]
    dist, _ = nearest_neighbours(test, train)
    assert ts[0] == pytest.approx(dist.min()) and ts[-1] == pytest.approx(dist.max())


def test_bad_arguments_are_named():
    x = smooth_slices(3, 9)
    with pytest.raises(ValueError, match="quantile"):
        near_copy_threshold(x, x, 1.5)
    with pytest.raises(ValueError, match="downsample 3"):
        nearest_neighbours(x, x, downsample=3)
    with pytest.raises(ValueError, match="at least one reference"):
        nearest_neighbours(x, x[:0])
    with pytest.raises(ValueError, match="differ in size"):
        nearest_neighbours(x, smooth_slices(2, 1, size=8))
    with pytest.raises(ValueError, match="threshold"):
        find_near_copies(x, x, -1.0)
    with pytest.raises(ValueError, match="ratio"):
        find_near_copies(x, x, 0.5, ratio=0.0)
    empty = find_near_copies(x[:0], x, 0.5)
    assert empty["share"] == 0.0 and empty["flags"].shape == (0,)
