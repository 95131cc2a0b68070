"""Known answers for the losses and samplers of alpha-GAN, ALI/BiGAN and the DDPM reference."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError

from models.registry import build_model
from models.zoo.ali import ALIConfig, JointCritic
from models.zoo.ddpm import noise_prediction_loss

from .conftest import REPO
from .tiny_configs import DIFFUSION_TINY

TINY = {"latent_dim": 8, "width": 8, "max_width": 16}
LOG2 = math.log(2.0)


def _batch(channels: int = 2, size: int = 16, n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def _build(name: str, image_channels: int = 2, size: int = 16, **over):
    torch.manual_seed(0)
    base = DIFFUSION_TINY if name == "ddpm" else TINY
    return build_model(name, {**base, **over}, image_channels, size)


class _Spy:
    """Records the inputs of every forward call of a module: positional, then keyword ones."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, ...]] = []
        module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs, _out) -> None:
        self.calls.append((*args, *kwargs.values()))


def _zero_head(linear: torch.nn.Linear) -> None:
    """Make a discriminator answer logit 0 (D = 1/2) for every input."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()


# ----------------------------------------------------------------------------------- DDPM
class _NoiseOracle(torch.nn.Module):
    """eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t): the noise that made x_t from x0."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.x0, self.abar = x0, alphas_cumprod
        self.timesteps: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(timesteps)
        abar = self.abar.to(x_t)[timesteps].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()


def test_noise_prediction_loss_known_values():
    noise = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert noise_prediction_loss(noise, noise) == 0
    assert torch.allclose(
        noise_prediction_loss(torch.zeros_like(noise), noise), noise.pow(2).mean()
    )
    with pytest.raises(ValueError, match="predicted"):
        noise_prediction_loss(noise, noise[:2])


def test_ddpm_loss_is_zero_when_the_network_predicts_the_true_noise():
    model = _build("ddpm", num_train_timesteps=50)
    x = _batch(n=16)
    oracle = _NoiseOracle(x, model.scheduler.alphas_cumprod.clone())
    model.unet = oracle
    terms = model.losses(x)
    assert terms["mse"] < 1e-10 and torch.equal(terms["total"], terms["mse"])
    t = oracle.timesteps[0]
    assert t.shape == (16,) and t.dtype == torch.long and 0 <= t.min() and t.max() < 50

    class Zero(torch.nn.Module):
        def forward(self, x_t, timesteps):
            return torch.zeros_like(x_t)

    model.unet = Zero()  # predicting 0 costs E[eps^2] = 1 per element
    assert 0.8 < model.losses(x)["mse"] < 1.2


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_ddim_calls_the_network_once_per_step(steps):
    model = _build("ddpm", num_train_timesteps=20, ddim_steps=steps)
    spy = _Spy(model.unet)
    out = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert len(spy.calls) == steps
    assert out.shape == (5, 2, 16, 16) and out.min() >= -1 and out.max() <= 1
    seen = [int(args[1][0]) for args in spy.calls]  # forward(x, timesteps)
    assert seen[0] == 19 and seen == sorted(seen, reverse=True) and len(set(seen)) == steps
    assert all(args[0].shape == (5, 2, 16, 16) and args[1].shape == (5,) for args in spy.calls)


def test_ddim_recovers_x0_from_an_exact_noise_predictor():
    """With eps_theta exact for a fixed x0, every DDIM step predicts x0 and the chain ends on it."""
    model = _build("ddpm", num_train_timesteps=40, ddim_steps=6).eval()
    x0 = _batch(n=3) * 0.9
    model.unet = _NoiseOracle(x0, model.scheduler.alphas_cumprod.clone())
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(model.decode(z), x0, atol=1e-4)


def test_ddpm_has_no_encoder_or_critic_and_validates_its_geometry():
    model = _build("ddpm")
    assert not model.has_encoder and not model.has_critic and model.n_critic == 0
    assert model.latent_dim == 2 * 16 * 16
    with pytest.raises(NotImplementedError):
        model.encode(_batch())
    with pytest.raises(ValueError, match=r"\(B, 512\)"):
        model.decode(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="halvings"):
        _build("ddpm", size=16, channels=[8, 8, 8, 8, 8], attention_levels=[False] * 5)
    with pytest.raises(ValidationError, match="attention_levels"):
        _build("ddpm", attention_levels=[False])
    with pytest.raises(ValidationError, match="norm_num_groups"):
        _build("ddpm", channels=[8, 6])
    with pytest.raises(ValidationError, match="ddim_steps"):
        _build("ddpm", ddim_steps=9)  # more than the 8 training timesteps
    with pytest.raises(ValidationError, match="latent_dim"):
        _build("ddpm", latent_dim=8)  # x_T is the latent: its size is not configurable


def test_registry_import_does_not_load_monai():
    code = "import sys, models.registry as r; r.available(); print('monai' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------- ALI
def test_ali_discriminator_sees_encoder_and_generator_pairs():
    model = _build("ali").eval()  # eval: z = mu, so the pairs can be recomputed exactly
    x = _batch()
    images, codes = model.pairs(x)
    assert images.shape == (8, 2, 16, 16) and codes.shape == (8, 8)
    mu, _ = model.encode(x)
    assert torch.equal(images[:4], x) and torch.allclose(codes[:4], mu)  # (x, E(x))
    assert torch.allclose(images[4:], model.decode(codes[4:]))  # (G(z), z)

    spy = _Spy(model.critic)
    model.losses(x)
    model.critic_loss(x)
    for x_in, z_in in spy.calls:
        assert x_in.shape == (8, 2, 16, 16) and z_in.shape == (8, 8)
        assert torch.equal(x_in[:4], x) and torch.allclose(z_in[:4], mu)


def test_ali_losses_at_an_undecided_discriminator():
    model = _build("ali")
    _zero_head(model.critic.joint[-1])
    x = _batch()
    terms, critic = model.losses(x), model.critic_loss(x)
    for t, first, second in ((terms, "enc", "gen"), (critic, "real", "fake")):
        assert torch.allclose(t[first], torch.tensor(LOG2)) and torch.allclose(t[second], t[first])
        assert torch.allclose(t["total"], torch.tensor(2 * LOG2))


def test_joint_critic_shapes_and_batch_check():
    critic = JointCritic(ALIConfig(**TINY, code_hidden=16), 2, [8, 16, 16])
    assert critic(_batch(), torch.zeros(4, 8)).shape == (4,)
    with pytest.raises(ValueError, match="batches differ"):
        critic(_batch(), torch.zeros(3, 8))


# ----------------------------------------------------------------------------------- alpha-GAN
def test_alpha_gan_code_discriminator_takes_z():
    model = _build("alpha_gan").eval()
    x = _batch()
    mu, _ = model.encode(x)
    spy = _Spy(model.critic["code"])
    model.losses(x)
    assert len(spy.calls) == 1 and torch.allclose(spy.calls[0][0], mu)  # C(z^), z^ = mu in eval
    model.critic_loss(x)
    (codes,) = spy.calls[1]
    assert codes.shape == (8, 8) and torch.allclose(codes[4:], mu)  # [prior z; posterior z^]
    assert not torch.allclose(codes[:4], mu)
    assert set(model.critic) == {"image", "code"}
    critic_ids = {id(p) for p in model.critic_parameters()}
    assert critic_ids == {id(p) for p in model.critic.parameters()}
    assert not critic_ids & {id(p) for p in model.generator_parameters()}


@pytest.mark.parametrize(
    "form,adv,code_adv", [("ratio", 0.0, 0.0), ("non_saturating", 2 * LOG2, LOG2)]
)
def test_alpha_gan_losses_at_undecided_discriminators(form, adv, code_adv):
    model = _build("alpha_gan", adv_form=form, rec_weight=0.5).eval()
    _zero_head(model.critic["image"].head)
    _zero_head(model.critic["code"][-2])  # Linear, Flatten
    x = _batch()
    t = model.losses(x)
    rec = (x - model(x).recon).abs().flatten(1).sum(1).mean()  # ||x - G(E(x))||_1
    assert torch.allclose(t["rec"], rec)
    assert torch.allclose(t["adv"], torch.tensor(adv)) and torch.allclose(
        t["code_adv"], torch.tensor(code_adv)
    )
    assert torch.allclose(t["total"], 0.5 * rec + adv + code_adv)
    c = model.critic_loss(x)  # -log D(x) - 2 log(1 - D(fake)); -log C(z) - log(1 - C(z^))
    assert torch.allclose(c["image"], torch.tensor(3 * LOG2))
    assert torch.allclose(c["code"], torch.tensor(2 * LOG2))


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat(
        [p.grad.flatten() for p in module.parameters() if p.grad is not None] or [torch.zeros(1)]
    )


def test_alpha_gan_routes_gradients_as_algorithm_1():
    """The encoder gets L1 + code term only; the generator L1 + image terms only."""
    model = _build("alpha_gan", dropout=0.0).train()
    x = _batch()
    for term, encoder_moves, generator_moves in [
        ("adv", False, True),
        ("code_adv", True, False),
        ("rec", True, True),
    ]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        model.losses(x)[term].backward()
        assert (_grads(model.encoder).abs().max() > 0) == encoder_moves, term
        assert (_grads(model.generator).abs().max() > 0) == generator_moves, term
