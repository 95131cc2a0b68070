"""Every registered model: construction, output contract, losses, registry errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from models.base import (
    VAEOutput,
    eval_mode,
    kl_standard_normal,
    log_likelihood,
    reparameterize,
)
from models.blocks import Critic, stage_widths
from models.registry import UnknownModelError, available, build_model, lookup
from models.zoo.vae_gan import feature_llike
from models.zoo.wgan_gp import gradient_penalty

from .tiny_configs import tiny_config

TINY = {"latent_dim": 8, "width": 8, "max_width": 16}
GEOMETRIES = [(1, 16), (2, 32)]


def _build(name: str, channels: int, size: int, **over):
    torch.manual_seed(0)
    return build_model(name, tiny_config(name, TINY, **over), channels, size)


def _batch(channels: int, size: int, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def _pairs(size: int, n: int) -> torch.Tensor:
    """(image, mask) pairs for a mask-conditioned model: a square mask in {-1, 1}."""
    x = _batch(2, size, n)
    x[:, 1] = -1.0
    x[:, 1, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    return x


def _cases() -> list[tuple[str, int, int]]:
    """(name, channels, size) of every model at every geometry it takes: a mask-conditioned
    model trains on (image, mask) pairs only, so it skips the 1-channel geometry."""
    return [
        (name, channels, size)
        for name in available()
        for channels, size in GEOMETRIES
        if channels == 2 or not lookup(name)[0].conditional
    ]


def test_registry_lists_all_models():
    assert available() == [
        "aae",
        "ae",
        "ali",
        "alpha_gan",
        "beta_tcvae",
        "beta_vae",
        "cddpm",
        "cgvae",
        "constrained_vae_gan",
        "ddpm",
        "gan",
        "gan_drift_reg",
        "gvae",
        "spade_gan",
        "vae",
        "vae_gan",
        "wgan",
        "wgan_gp",
    ]


@pytest.mark.parametrize("name,channels,size", _cases())
def test_build_sample_decode(name, channels, size):
    model = _build(name, channels, size)
    # A diffusion model's latent is its initial noise x_T: one value per pixel of each channel
    # it draws (a mask-conditioned one draws the image channel only).
    drawn = channels - model.conditional
    latent = 8 if "latent_dim" in type(model.config).model_fields else drawn * size * size
    assert (model.name, model.channels, model.size) == (name, channels, size)
    assert model.latent_dim == latent
    cond = _pairs(size, 5) if model.conditional else None
    out = model.sample(5, generator=torch.Generator().manual_seed(0), condition=cond)
    assert out.shape == (5, channels, size, size)
    assert out.min() >= -1 and out.max() <= 1
    assert model.training, "sample() must restore train mode"
    again = model.sample(5, generator=torch.Generator().manual_seed(0), condition=cond)
    assert torch.equal(out, again), "sampling with a seeded generator must be deterministic"
    decoded = model.decode(torch.zeros(3, latent), *([] if cond is None else [cond[:3]]))
    assert decoded.shape == (3, channels, size, size)
    if model.conditional:  # the drawn pair carries its conditioning mask as its label
        assert torch.equal(out[:, 1:], cond[:, 1:]) and torch.equal(decoded[:, 1:], cond[:3, 1:])
        with pytest.raises(ValueError, match="condition"):
            model.sample(5, generator=torch.Generator().manual_seed(0))
    else:
        with pytest.raises(ValueError, match="not mask-conditioned"):
            model.sample(2, condition=_pairs(size, 2))


@pytest.mark.parametrize("name,channels,size", _cases())
def test_losses_finite_and_critic(name, channels, size):
    model = _build(name, channels, size)
    x = _batch(channels, size)
    terms = model.losses(x)
    assert "total" in terms and terms["total"].ndim == 0 and torch.isfinite(terms["total"])
    terms["total"].backward()
    gen_grads = [p.grad for p in model.generator_parameters() if p.grad is not None]
    assert gen_grads and all(torch.isfinite(g).all() for g in gen_grads)
    if model.has_critic:
        assert model.n_critic >= 1
        model.zero_grad(set_to_none=True)
        c = model.critic_loss(x)
        assert torch.isfinite(c["total"])
        c["total"].backward()
        # The critic step trains the critic only: no gradient reaches the generator.
        assert all(p.grad is None for p in model.generator_parameters())
        assert any(p.grad is not None for p in model.critic_parameters())
    else:
        assert model.n_critic == 0 and list(model.critic_parameters()) == []
        with pytest.raises(NotImplementedError):
            model.critic_loss(x)


@pytest.mark.parametrize("name,channels,size", [c for c in _cases() if lookup(c[0])[0].has_encoder])
def test_vae_contract(name, channels, size):
    model = _build(name, channels, size)
    x = _batch(channels, size)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 8)
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.recon.shape == x.shape and out.z.shape == (4, 8)
    # Train mode samples z, except where the encoder is deterministic (the plain autoencoder).
    assert torch.equal(out.z, out.mu) == model.deterministic_encoder
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)
    assert out.recon.min() >= -1 and out.recon.max() <= 1
    lp = model.log_px_given_z(x, out.recon)
    assert lp.shape == (4,) and torch.isfinite(lp).all()


def test_models_without_encoder():
    model = _build("wgan_gp", 1, 16)
    assert not model.has_encoder and model.has_critic and model.n_critic == 5
    with pytest.raises(NotImplementedError):
        model.encode(_batch(1, 16))


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as info:
        build_model("gan9000", {}, 1, 16)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    for name in available():
        assert name in str(info.value)


def test_bad_config_key_and_geometry():
    with pytest.raises(ValidationError, match="latnet_dim"):
        build_model("vae", {"latnet_dim": 4}, 1, 16)
    with pytest.raises(ValidationError):
        build_model("gvae", {"beta": 2.0}, 1, 16)  # beta belongs to the VAE only
    for size in (8, 24, 48):
        with pytest.raises(ValueError, match="power of two"):
            build_model("vae", TINY, 1, size)
    with pytest.raises(ValueError, match="channels"):
        build_model("vae", TINY, 0, 16)


def test_beta_vae_is_the_vae_with_beta_from_params():
    vae, beta = _build("vae", 1, 16), _build("beta_vae", 1, 16)
    assert type(vae) is type(beta)
    assert (vae.config.beta, beta.config.beta) == (1.0, 4.0)
    assert _build("beta_vae", 1, 16, beta=2.5).config.beta == 2.5
    x = _batch(1, 16)
    for model in (vae, beta, _build("beta_vae", 1, 16, beta=2.5)):
        torch.manual_seed(3)
        t = model.losses(x)
        assert torch.allclose(t["total"], t["rec"] + model.config.beta * t["kl"])
        assert t["kl"] > 0


def test_likelihoods():
    x = _batch(2, 16)
    # Perfect reconstruction maximises both likelihoods; a gaussian value is known in closed form.
    near, far = x * 0.99, -x
    for lik in ("bernoulli", "gaussian"):
        assert (log_likelihood(x, near, lik, 0.1) > log_likelihood(x, far, lik, 0.1)).all()
    zeros = torch.zeros(3, 1, 4, 4)
    expected = 16 * (-torch.log(torch.tensor(0.5)) - 0.5 * torch.log(torch.tensor(2 * torch.pi)))
    assert torch.allclose(log_likelihood(zeros, zeros, "gaussian", 0.5), expected.expand(3))
    # Bernoulli on a binary target with mean 0.5 costs log(2) nats per pixel.
    ones = torch.ones(2, 1, 4, 4)
    assert torch.allclose(
        log_likelihood(ones, torch.zeros_like(ones), "bernoulli", 1.0),
        torch.full((2,), -16 * torch.log(torch.tensor(2.0))),
    )
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    assert torch.equal(kl_standard_normal(mu, logvar), torch.zeros(2))
    assert (kl_standard_normal(mu + 1, logvar) == 2.5).all()


def test_gaussian_likelihood_used_by_the_loss():
    model = _build("vae", 1, 16, likelihood="gaussian", sigma=0.5)
    x = _batch(1, 16)
    out = model.eval()(x)
    expected = log_likelihood(x, out.recon, "gaussian", 0.5)
    assert torch.allclose(model.log_px_given_z(x, out.recon), expected)
    torch.manual_seed(0)
    assert torch.allclose(-model.losses(x)["rec"], expected.mean())


@pytest.mark.parametrize("norm", ["layer", "instance", "none"])
def test_gradient_penalty_random_critic(norm):
    torch.manual_seed(0)
    critic = Critic(2, stage_widths(8, 16, 2), 1, norm, 0.3)
    real, fake = _batch(2, 16, 6), _batch(2, 16, 6).flip(0)
    gp = gradient_penalty(critic, real, fake)
    assert gp.ndim == 0 and torch.isfinite(gp) and gp > 0
    gp.backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters() if p.grad is not None)


def test_gradient_penalty_is_zero_for_unit_slope_critic():
    class Linear(torch.nn.Module):
        def forward(self, x):  # gradient w.r.t. each sample has norm exactly 1
            return x.flatten(1).sum(1) / x[0].numel() ** 0.5

    assert gradient_penalty(Linear(), _batch(1, 16), _batch(1, 16).flip(0)).abs() < 1e-10


def test_critic_refuses_batch_norm():
    with pytest.raises(ValueError, match="gradient penalty"):
        Critic(1, stage_widths(8, 16, 2), 1, "batch", 0.0)
    with pytest.raises(ValidationError):
        build_model("gvae", {**TINY, "critic_norm": "batch"}, 1, 16)


def test_vae_gan_feature_layer_validated():
    assert _build("vae_gan", 1, 16, feature_layer=0).config.feature_layer == 0
    with pytest.raises(ValueError, match="feature_layer"):
        _build("vae_gan", 1, 16, feature_layer=2)  # 16 px -> 2 stages: valid -2..1


def _encoder_grad(model, loss_fn) -> torch.Tensor:
    """Flattened encoder gradient of ``loss_fn()``, with the global seed fixed first."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss_fn().backward()
    return torch.cat(
        [
            torch.zeros(p.numel()) if p.grad is None else p.grad.flatten()
            for p in model.encoder.parameters()
        ]
    )


def test_vae_gan_gradient_routing():
    """Encoder gets exactly d(KL + L_llike) in TRAIN mode (Larsen et al. 2016, Algorithm 1).

    Train mode is the case that matters: batch norm then normalises over each decoder call, so a
    reconstruction decoded together with the GAN fakes would leak the GAN term into the encoder.
    Dropout is off only so the direct reference below can replay the same forward pass.
    """
    model = _build("vae_gan", 1, 16, dropout=0.0, gamma=0.1).train()
    x = _batch(1, 16)
    c = model.config

    assert _encoder_grad(model, lambda: model.losses(x)["gan"]).abs().max() == 0
    full = _encoder_grad(model, lambda: model.losses(x)["total"])

    def direct():  # d(KL + L_llike) without the routing trick; the same z (seed 5)
        mu, logvar = model.encode(x)
        z = reparameterize(mu, logvar, True)
        _, feats = model.critic(torch.cat([x, model.decode(z)]), with_features=True)
        f = feats[c.feature_layer].float().flatten(1)
        llike = 0.5 * (f[:4] - f[4:]).pow(2).sum(1).mean()
        return c.kl_weight * kl_standard_normal(mu, logvar).mean() + llike

    reference = _encoder_grad(model, direct)
    assert reference.abs().max() > 1
    # fp32 rounding of the 1/gamma-then-gamma scaling only; the old coupling was O(1) per entry.
    assert torch.allclose(full, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vae_gan", "wgan_gp", "gvae"])
def test_critic_is_deterministic_in_train_mode(name):
    """Default config: dropout in E/G only, so the critic is one function within a step."""
    model = _build(name, 1, 16).train()
    assert model.config.dropout > 0 and model.config.critic_dropout == 0
    x = _batch(1, 16)
    assert torch.equal(model.critic(x), model.critic(x))
    if name == "vae_gan":  # Dis_l(x) reconstructs x exactly: L_llike(x, x) = 0 (eq. 9)
        feats, _ = model._features_and_logits(torch.cat([x, x]))
        assert feature_llike(feats[:4], feats[4:]) == 0


def test_eval_mode_restores_each_flag_even_on_error():
    model = _build("vae", 1, 16).train()
    model.encoder.eval()  # a part the caller keeps frozen must stay in eval
    before = {name: m.training for name, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model) as inner:
        assert inner is model and not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert {name: m.training for name, m in model.named_modules()} == before
