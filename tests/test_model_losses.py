"""Known answers for the baseline models' losses and the trainer's per-model hooks."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.distributions import Normal

from models.config import TrainConfig
from models.registry import build_model
from models.train.checkpoint import load_checkpoint
from models.train.optim import make_optimizer
from models.train.trainer import train
from models.zoo.beta_tcvae import mws_decomposition
from models.zoo.constrained_vae_gan import hinge
from models.zoo.gan import discriminator_loss, nonsaturating_loss

TINY = {"latent_dim": 8, "width": 4, "max_width": 8}


def _model(name: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_model(name, {**TINY, **over}, 1, 16)


def _data(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


def _cfg(**over) -> TrainConfig:
    base = dict(steps=2, batch_size=4, lr=1e-3, log_every=1, device="cpu", grid=2)
    return TrainConfig(**{**base, "checkpoint_every": 2, "sample_every": 2, **over})


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------- beta-TCVAE (MWS)
def _posterior_batch(kind: str, m: int = 2000, d: int = 3):
    """(z, mu, logvar) of m codes: factorised ("indep") or all dimensions one factor ("corr")."""
    g = torch.Generator().manual_seed(0)
    if kind == "indep":  # mu_i ~ N(0, 0.25 I), q(z|n_i) = N(mu_i, I): q(z) = N(0, 1.25 I)
        mu, logvar = 0.5 * torch.randn(m, d, generator=g), torch.zeros(m, d)
    else:  # mu_i = u_i (1, ..., 1), u_i ~ N(0, 1), q(z|n_i) = N(mu_i, 0.01 I)
        mu = torch.randn(m, 1, generator=g).expand(m, d).clone()
        logvar = torch.full((m, d), math.log(0.01))
    z = mu + (0.5 * logvar).exp() * torch.randn(m, d, generator=g)
    return z, mu, logvar


def _gaussian_tc(cov: torch.Tensor) -> float:
    """Total correlation of N(0, cov): 1/2 (sum_d log cov_dd - log det cov), nats."""
    return 0.5 * float(cov.diagonal().log().sum() - torch.logdet(cov))


def test_mws_total_correlation_known_answers():
    """With N = 1 the MWS normaliser is log M: the estimates are those of the batch's mixture,
    which for 2000 codes is the aggregate posterior q(z) up to sampling error."""
    terms = mws_decomposition(*_posterior_batch("indep"), dataset_size=1)
    assert abs(float(terms["tc"])) < 0.01  # independent factors: no total correlation
    # q(z) = N(0, 1.25 I): I(z; n) = 3/2 log 1.25 and KL(N(0, 1.25) || N(0, 1)) per dimension.
    assert float(terms["mi"]) == pytest.approx(1.5 * math.log(1.25), abs=0.03)
    assert float(terms["dwkl"]) == pytest.approx(1.5 * (0.25 - math.log(1.25)), abs=0.03)

    corr = mws_decomposition(*_posterior_batch("corr"), dataset_size=1)
    cov = torch.ones(3, 3) + 0.01 * torch.eye(3)  # q(z) = N(0, 1 1^T + 0.01 I)
    assert _gaussian_tc(cov) > 4
    assert float(corr["tc"]) == pytest.approx(_gaussian_tc(cov), abs=0.1)


def test_mws_terms_sum_to_the_monte_carlo_kl_and_n_shifts_by_constants():
    z, mu, logvar = _posterior_batch("corr", m=64, d=5)
    std = (0.5 * logvar).exp()
    mc_kl = (Normal(mu, std).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    one = mws_decomposition(z, mu, logvar, 1)
    big = mws_decomposition(z, mu, logvar, 60000)
    for terms in (one, big):
        assert float(sum(terms.values())) == pytest.approx(float(mc_kl), abs=1e-4)
    log_n = math.log(60000)  # the estimator's constants (models/zoo/beta_tcvae.py docstring)
    assert float(big["tc"] - one["tc"]) == pytest.approx(4 * log_n, abs=1e-3)
    assert float(big["mi"] - one["mi"]) == pytest.approx(log_n, abs=1e-3)
    assert float(big["dwkl"] - one["dwkl"]) == pytest.approx(-5 * log_n, abs=1e-3)
    with pytest.raises(ValueError, match="dataset_size"):
        mws_decomposition(z, mu, logvar, 0)


def test_beta_tcvae_total_weights_the_three_terms():
    model = _model("beta_tcvae", alpha=0.5, beta=6.0, gamma=2.0, dataset_size=100)
    torch.manual_seed(3)
    t = model.losses(_data()[:8])
    expected = t["rec"] + 0.5 * t["mi"] + 6.0 * t["tc"] + 2.0 * t["dwkl"]
    assert torch.allclose(t["total"], expected)
    assert (model.config.alpha, model.config.gamma) == (0.5, 2.0)
    assert build_model("beta_tcvae", TINY, 1, 16).config.beta > 1  # the paper's regime


# ----------------------------------------------------------------------- GAN family
def test_nonsaturating_generator_loss_on_a_stub_discriminator():
    class Stub(nn.Module):  # a fixed discriminator: logit = 4 * mean intensity
        def forward(self, x):
            return 4.0 * x.flatten(1).mean(1)

    model = _model("gan").eval()  # eval: the generator is deterministic given z
    model.critic = Stub()
    x = _data()[:6]
    torch.manual_seed(11)
    adv = model.losses(x)["adv"]
    torch.manual_seed(11)
    fake = model.decode(torch.randn(6, 8))  # the same prior draw as inside losses()
    expected = -torch.log(torch.sigmoid(Stub()(fake))).mean()
    assert torch.allclose(adv, expected, atol=1e-6)

    logits = torch.linspace(-5, 5, 11)
    assert torch.allclose(nonsaturating_loss(logits), -torch.log(torch.sigmoid(logits)).mean())
    zero = discriminator_loss(torch.zeros(4), torch.zeros(4))  # D = 1/2 everywhere
    assert torch.allclose(zero["real"], torch.tensor(math.log(2)))
    assert torch.allclose(zero["total"], torch.tensor(2 * math.log(2)))


def test_wgan_weight_clipping_after_a_trainer_step(tmp_path):
    model = _model("wgan", clip=0.01)
    assert max(float(p.detach().abs().max()) for p in model.critic.parameters()) > 0.01  # before
    train(model, _data(), _cfg(steps=1, optimizer="rmsprop", lr=5e-5), tmp_path, progress=False)
    for name, p in model.critic.named_parameters():
        assert float(p.detach().abs().max()) <= 0.01, name
    # Algorithm 1's RMSProp for both networks, chosen by the trainer config.
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("gen_opt_state", "critic_opt_state"):
        assert all("square_avg" in s for s in ck[key]["state"].values())


def test_optimizer_choice_is_validated():
    with pytest.raises(ValidationError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", [nn.Parameter(torch.zeros(1))], 1e-3, (0.9, 0.999))


def test_drift_is_zero_while_g_equals_g_old_and_positive_after_an_update():
    model = _model("gan_drift_reg", drift_weight=0.5)  # train mode: dropout and batch norm on
    x = _data()[:8]
    first = model.losses(x)
    assert first["drift"].item() == 0.0  # same weights, same dropout masks
    assert torch.allclose(first["total"], first["adv"])
    frozen = {id(p) for m in (model.generator_old, model.generator_prev) for p in m.parameters()}
    params = list(model.generator_parameters())
    assert params and not frozen & {id(p) for p in params}
    opt = torch.optim.Adam(params, lr=1e-2)
    opt.zero_grad()
    first["total"].backward()
    assert all(p.grad is None for m in (model.generator_old,) for p in m.parameters())
    opt.step()
    model.after_generator_step()  # G_old <- weights before this update (the initial ones)
    second = model.losses(x)
    assert second["drift"].item() > 0
    assert torch.allclose(second["total"], second["adv"] + 0.5 * second["drift"])


def test_drift_through_the_trainer_and_checkpoint(tmp_path):
    model = _model("gan_drift_reg")
    train(model, _data(), _cfg(steps=3), tmp_path, progress=False)
    drift = [float(r["drift"]) for r in _rows(tmp_path / "losses.csv")]
    assert drift[0] == 0 and drift[1] > 0 and drift[2] > 0
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")  # the frozen copies load consistently
    for name in ("generator_old", "generator_prev"):
        mine, theirs = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    n_opt = sum(len(g["params"]) for g in ck["gen_opt_state"]["param_groups"])
    assert n_opt == len(list(model.generator.parameters()))  # copies are not optimised


@pytest.mark.parametrize("name", ["gan_drift_reg", "wgan", "aae"])
def test_resume_equals_uninterrupted_with_hooks(name, tmp_path):
    """The hooks' state (clipped weights, frozen generator copies) survives a resume exactly."""
    data = _data()
    over = {"n_critic": 1}  # one critic step per update keeps the CPU cost small
    full = _model(name, **over)
    train(full, data, _cfg(steps=4), tmp_path / "full", progress=False)
    part = _model(name, **over)
    train(part, data, _cfg(steps=2), tmp_path / "part", progress=False)
    fresh = _model(name, seed=123, **over)
    train(fresh, data, _cfg(steps=4), tmp_path / "part", resume=True, progress=False)
    full_state = full.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, full_state[key]), key


def test_trainer_calls_the_hooks_after_each_update(tmp_path):
    model = _model("wgan_gp", n_critic=3)
    calls = []
    model.after_critic_step = lambda: calls.append("critic")
    model.after_generator_step = lambda: calls.append("generator")
    train(model, _data(), _cfg(steps=2), tmp_path, progress=False)
    assert calls == (["critic"] * 3 + ["generator"]) * 2


# ----------------------------------------------------------------------- VAE-GAN, AE, AAE
def test_constrained_vae_gan_hinge():
    assert float(hinge(torch.tensor(0.5), 1.0)) == 0.0
    assert float(hinge(torch.tensor(1.5), 1.0)) == pytest.approx(0.5)
    x = _data()[:4]
    slack = _model("constrained_vae_gan", gan_bound=1e6, hinge_weight=3.0)
    torch.manual_seed(0)
    t = slack.losses(x)
    assert t["gan"].item() < 1e6 and t["hinge"].item() == 0.0  # L_GAN < d: inactive
    c = slack.config
    assert torch.allclose(t["total"], c.kl_weight * t["kl"] + c.gamma * t["llike"])
    tight = _model("constrained_vae_gan", gan_bound=0.0, hinge_weight=3.0)
    torch.manual_seed(0)
    t = tight.losses(x)
    assert torch.allclose(t["hinge"], t["gan"])  # d = 0: the whole (positive) GAN term
    assert torch.allclose(t["total"], c.kl_weight * t["kl"] + c.gamma * t["llike"] + 3 * t["gan"])


def test_autoencoder_is_deterministic_mse():
    model = _model("ae", eval_posterior_std=0.2, dropout=0.0)
    x = _data()[:4]
    mu, logvar = model.encode(x)
    assert torch.allclose(logvar, torch.full_like(mu, 2 * math.log(0.2)))
    out = model(x)  # train mode, yet z = mu
    assert torch.equal(out.z, out.mu)
    assert torch.allclose(model.losses(x)["mse"], F.mse_loss(out.recon, x))


def test_aae_adversarial_term_trains_the_encoder_only():
    model = _model("aae")
    assert isinstance(model.critic, nn.Sequential)  # the code discriminator, on z
    assert model.critic(torch.zeros(5, 8)).shape == (5,)
    model.losses(_data()[:4])["adv"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.generator.parameters())
