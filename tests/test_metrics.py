"""Known-answer tests of the sample and likelihood metrics."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics.mmd import compute_mmd

from models.base import kl_standard_normal
from models.eval.likelihood import (
    elbo_and_kl,
    iwae_bound,
    log_importance_weights,
    reconstruction_error,
)
from models.eval.metrics import (
    _mmd2_from_kernels,
    fid,
    median_bandwidth,
    mmd,
    mode_coverage,
    ms_ssim,
    ms_ssim_diversity,
    precision_recall,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n, seed=0):
    """Smooth random 32x32 images in [-1, 1] (blurred noise, so SSIM has structure to see)."""
    x = torch.randn((n, 1, 32, 32), generator=_gen(seed))
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    return (x / x.abs().amax()).clamp(-1, 1)


# ----------------------------------------------------------------------------- MMD
def test_mmd_same_distribution_near_zero_shift_clearly_positive():
    x = torch.randn((300, 1, 4, 4), generator=_gen(1))
    x2 = torch.randn((300, 1, 4, 4), generator=_gen(2))
    same = mmd(x, x2)
    shifted = mmd(x, x2 + 0.5)
    assert abs(same) < 5e-3
    assert shifted > 0.05 and shifted > 20 * abs(same)
    assert mmd(x, x2 + 1.0) > shifted


def test_biased_mmd_of_a_sample_with_itself_is_zero():
    x = torch.randn((50, 8), generator=_gen(3))
    assert mmd(x, x, biased=True) == pytest.approx(0.0, abs=1e-12)
    # The unbiased estimate of X vs X is negative: the cross term keeps the diagonal ones.
    assert mmd(x, x) < 0


def test_unbiased_estimator_matches_monai_with_linear_kernel():
    x = torch.randn((40, 1, 3, 3), generator=_gen(4)).double()
    y = torch.randn((40, 1, 3, 3), generator=_gen(5)).double() + 0.3
    a, b = x.reshape(40, -1), y.reshape(40, -1)
    ours = _mmd2_from_kernels(a @ a.T, b @ b.T, a @ b.T, biased=False)
    assert float(ours) == pytest.approx(float(compute_mmd(x, y, None)), rel=1e-10)


def test_median_bandwidth_known_answer_and_input_untouched():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0]])
    before = x.clone()
    assert median_bandwidth(x, y) == pytest.approx(2.0)  # distances 1, 3, 2
    assert median_bandwidth(torch.cat([x, y])) == pytest.approx(2.0)
    assert torch.equal(x, before)


def test_mmd_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        mmd(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(torch.zeros(1, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(torch.zeros(3, 4), torch.ones(3, 4), bandwidth=-1.0)


# ----------------------------------------------------------------------------- MS-SSIM
def test_ms_ssim_of_image_with_itself_is_one_and_drops_with_noise():
    x = _images(4)
    assert torch.allclose(ms_ssim(x, x), torch.ones(4), atol=1e-5)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=_gen(7))).clamp(-1, 1)
    noisier = (x + 0.8 * torch.randn(x.shape, generator=_gen(7))).clamp(-1, 1)
    s1, s2 = ms_ssim(x, noisy), ms_ssim(x, noisier)
    assert (s1 < 0.99).all() and (s2 < s1).all()


def test_ms_ssim_diversity_collapsed_vs_diverse():
    x = _images(50)
    collapsed = x[:1].repeat(50, 1, 1, 1)
    assert ms_ssim_diversity(collapsed, 200, _gen()) == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim_diversity(x, 200, _gen()) < 0.5


def test_ms_ssim_diversity_never_pairs_an_image_with_itself():
    x = _images(2)
    expected = float(ms_ssim(x[:1], x[1:]))
    assert ms_ssim_diversity(x, 64, _gen(), batch_size=10) == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- mode coverage
def test_mode_coverage_single_class_and_balanced():
    one_hot = torch.nn.functional.one_hot(torch.full((30,), 3), 10).float()
    single = mode_coverage(one_hot)
    assert single["class_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert single["mean_image_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert single["histogram"][3] == 30 and single["modes_covered"] == 1
    # +0.0, not -0.0: the figure goes into JSON files that people read.
    assert math.copysign(1.0, single["class_entropy"]) == 1.0
    assert math.copysign(1.0, single["mean_image_entropy"]) == 1.0

    balanced = torch.nn.functional.one_hot(torch.arange(100) % 10, 10).float()
    out = mode_coverage(balanced)
    assert out["class_entropy"] == pytest.approx(math.log(10))
    assert out["histogram"] == [10] * 10 and out["modes_covered"] == 10

    # Confident (peaked) predictions have lower per-image entropy than uncertain ones.
    soft = 0.5 * balanced + 0.05
    assert mode_coverage(soft)["mean_image_entropy"] > 0.5


def test_mode_coverage_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probability"):
        mode_coverage(torch.ones(5, 10))


# ----------------------------------------------------------------------------- FID, P/R
def test_fid_zero_for_identical_and_equals_squared_mean_shift():
    f = torch.randn((500, 16), generator=_gen(8)).double()
    assert fid(f, f) == pytest.approx(0.0, abs=1e-6)
    shift = torch.full((16,), 0.5, dtype=torch.float64)
    # Same covariance, so the Fréchet distance is exactly ||shift||² = 16 * 0.25.
    assert fid(f, f + shift) == pytest.approx(4.0, rel=1e-5)
    assert fid(f, f + 2 * shift) > fid(f, f + shift)


def test_precision_recall_identical_disjoint_and_half():
    real = torch.randn((200, 8), generator=_gen(9))
    assert precision_recall(real, real, k=3) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}
    half = torch.cat([real[:100], real[:100] + 100.0])
    out = precision_recall(real, half, k=3, batch_size=37)
    assert out["precision"] == pytest.approx(0.5)


def test_precision_recall_detect_a_dropped_mode():
    # Two well-separated modes in the real set; the fake set reproduces only one of them.
    mode = torch.randn((200, 2), generator=_gen(1))
    real = torch.cat([mode[:100], 50 + mode[100:]])
    fake = torch.randn((200, 2), generator=_gen(2))
    out = precision_recall(real, fake, k=3)
    assert out["precision"] > 0.85
    assert 0.4 < out["recall"] <= 0.5


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)


# ----------------------------------------------------------------------------- likelihood
class LinearGaussian(torch.nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I) with orthogonal columns of W.

    WᵀW is diagonal, so the true posterior is a diagonal Gaussian the encoder can return
    exactly (``exact=True``), and log p(x) = log N(x; b, WWᵀ + s² I) is known in closed form.
    """

    def __init__(self, d=16, latent_dim=2, s=0.5, exact=True):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn((d, latent_dim), generator=_gen(10)).double())
        self.w = torch.nn.Parameter(q * torch.tensor([2.0, 1.0]).double(), requires_grad=False)
        self.b = torch.nn.Parameter(torch.linspace(-0.5, 0.5, d).double(), requires_grad=False)
        self.s, self.latent_dim, self.exact = s, latent_dim, exact

    def encode(self, x):
        x = x.reshape(len(x), -1).double()
        prec = 1 + (self.w**2).sum(0) / self.s**2  # diagonal of I + WᵀW / s²
        mu = (x - self.b) @ self.w / self.s**2 / prec
        logvar = -prec.log().expand_as(mu)
        if not self.exact:  # a deliberately poor posterior: IWAE must beat the ELBO
            mu, logvar = mu + 0.5, logvar + 1.0
        return mu, logvar

    def decode(self, z):
        return (z @ self.w.T + self.b).reshape(len(z), 1, 4, 4)

    def log_px_given_z(self, x, recon):
        r = (x.double() - recon).reshape(len(x), -1)
        return -0.5 * (r.pow(2) / self.s**2 + math.log(2 * math.pi * self.s**2)).sum(1)

    def log_px(self, x):
        cov = self.w @ self.w.T + self.s**2 * torch.eye(len(self.b), dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)
        return dist.log_prob(x.reshape(len(x), -1).double())


def _sample_x(model, n=200):
    z = torch.randn((n, 2), generator=_gen(11)).double()
    return (model.decode(z) + model.s * torch.randn((n, 1, 4, 4), generator=_gen(12))).float()


def test_exact_posterior_makes_every_bound_equal_log_px():
    model = LinearGaussian(exact=True)
    x = _sample_x(model)
    truth = float(model.log_px(x).mean())
    logw = log_importance_weights(model, x, 5, _gen(), batch_size=33)
    # With q = p(z|x) every importance weight equals p(x): no sample noise at all.
    assert torch.allclose(logw, model.log_px(x)[:, None].expand(-1, 5), atol=1e-8)
    assert iwae_bound(model, x, 5, _gen()) == pytest.approx(truth, abs=1e-8)
    out = elbo_and_kl(model, x, _gen())
    assert out["elbo"] == pytest.approx(out["log_px_given_z"] - out["kl"])
    assert out["elbo"] == pytest.approx(truth, abs=0.2)  # one-sample recon term, analytic KL


def test_iwae_bound_dominates_elbo_and_tightens_with_k():
    model = LinearGaussian(exact=False)
    x = _sample_x(model)
    truth = float(model.log_px(x).mean())
    logw = log_importance_weights(model, x, 64, _gen(3))
    iwae = iwae_bound(model, x, 64, _gen(3))
    assert iwae >= float(logw.mean())  # Jensen on the same z's: deterministic
    # k = 1 is exactly the one-sample ELBO estimate with the same draw.
    assert iwae_bound(model, x, 1, _gen(4)) == pytest.approx(
        float(log_importance_weights(model, x, 1, _gen(4)).mean()), abs=1e-12
    )
    elbo = elbo_and_kl(model, x, _gen(5))["elbo"]
    assert elbo < iwae_bound(model, x, 8, _gen(6)) < iwae < truth + 0.05
    assert truth - iwae < 0.5 * (truth - elbo)


def test_kl_standard_normal_known_values():
    """The one KL of the codebase, used by the losses and by the ELBO metric."""
    assert float(kl_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3))) == 0.0
    mu, logvar = torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]])
    assert float(kl_standard_normal(mu, logvar)) == pytest.approx(0.5 * (1 + 4 - 1 - math.log(4)))
    # Summed over the latent dims, one value per row; fp64 in stays fp64 (metrics are exact).
    kl = kl_standard_normal(mu.double().expand(2, 3), logvar.double().expand(2, 3))
    assert kl.dtype == torch.float64 and kl.shape == (2,)
    assert torch.allclose(kl, torch.full((2,), 1.5 * (4 - math.log(4)), dtype=torch.float64))


def test_reconstruction_error_and_model_mode_restored():
    model = LinearGaussian(exact=True)
    model.train()
    x = _sample_x(model, 50)
    mu, _ = model.encode(x)
    expected = float((model.decode(mu) - x.double()).pow(2).mean())
    assert reconstruction_error(model, x, batch_size=7) == pytest.approx(expected, rel=1e-9)
    assert model.training
    with pytest.raises(ValueError, match="no images"):
        reconstruction_error(model, x[:0])


def test_entropy_collapse_known_trajectories():
    from models.eval.metrics import entropy_collapse

    steady = entropy_collapse([0.5, 0.8, 0.95, 0.97], drop=0.15)
    assert not steady["collapsed"] and steady["reason"] is None and steady["largest_drop"] == 0.0
    lost = entropy_collapse([0.6, 0.95, 0.9, 0.75], drop=0.15)
    assert lost["collapsed"] and lost["largest_drop"] == pytest.approx(0.2)
    assert lost["reason"] == "fell 0.200 below its earlier best at snapshot 3"
    named = entropy_collapse([0.9, 0.1, 0.8], drop=0.15, labels=["step 5", "step 10", "step 15"])
    assert named["reason"] == "fell 0.800 below its earlier best at step 10"  # then recovered
    # Never diverse is not a collapse during training (the final class entropy reports it).
    assert not entropy_collapse([0.2, 0.3, 0.35], drop=0.15)["collapsed"]
    assert not entropy_collapse([0.9], drop=0.15)["collapsed"]
    with pytest.raises(ValueError, match="at least one snapshot"):
        entropy_collapse([], drop=0.15)
