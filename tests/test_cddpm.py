"""The mask-conditioned diffusion model (cddpm): it draws the image FOR its mask with either
sampler, deterministically for a seed, keeps the real slice outside the drawn region with
``context: background``, and refuses a bad config by the setting's name."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from models.config import TrainConfig
from models.registry import build_model
from models.train.trainer import train
from models.zoo.cgvae import drawn_region

from .test_conditional import _dice
from .tiny_configs import tiny_config

SAMPLERS = ["ddim", "rflow"]


def _build(size: int = 16, **over) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cddpm", tiny_config("cddpm", {}, **over), 2, size)


def _toy_pairs(n: int = 8, size: int = 16) -> torch.Tensor:
    """The overfit pairs of ``test_conditional``: a 5x5 organ, bright exactly under its mask,
    at a different place in each of the 8 pairs; (n, 2, size, size) in [-1, 1]."""
    masks, images = -torch.ones(n, 1, size, size), torch.full((n, 1, size, size), -0.6)
    for k in range(n):
        r, c = 2 + (k % 4) * 3, 2 + (k // 4) * 6
        masks[k, 0, r : r + 5, c : c + 5] = 1.0
        images[k, 0, r : r + 5, c : c + 5] = 0.8
    return torch.cat([images, masks], dim=1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cddpm_draws_the_image_for_its_mask(tmp_path, sampler):
    """Overfit on the 8 pairs: the drawn images, segmented by a fixed threshold, match their
    OWN masks far better than shuffled ones; a mask-blind model scores the same on both.

    Shuffling rolls each mask onto its neighbour's, which overlaps it (Dice 0.4 for six of the
    eight), so even perfect images score 0.30 against shuffled masks: the largest possible
    gap is 0.70, and the test asks for more than half of it. Measured on one thread (150
    steps, 11-19 s each), seeds 0-2: ddim own 0.83-0.93 vs shuffled 0.27-0.28, rflow 1.00 vs
    0.30.
    """
    data = _toy_pairs()
    model = _build(
        channels=[16, 16], num_train_timesteps=1000, sample_steps=10, sampler=sampler
    )  # T = 1000: with Ho et al.'s betas x_T is then pure noise, as DDIM's first step assumes
    cfg = TrainConfig(
        steps=150, batch_size=8, lr=3e-3, log_every=150, sample_every=150,
        checkpoint_every=150, device="cpu", grid=2,
    )  # fmt: skip
    train(model, data, cfg, tmp_path, progress=False)
    drawn = model.sample(8, generator=torch.Generator().manual_seed(1), condition=data)
    own = data[:, 1] > 0
    segmented, shuffled = drawn[:, 0] > 0.1, own[torch.roll(torch.arange(8), 1)]
    assert _dice(segmented, own).mean() > 0.7
    assert _dice(segmented, own).mean() > _dice(segmented, shuffled).mean() + 0.4


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("context", ["none", "background"])
def test_sampling_is_seeded_and_returns_the_conditioning_mask(sampler, context):
    model = _build(sampler=sampler, context=context)
    cond = _toy_pairs(4)
    first = model.sample(4, generator=torch.Generator().manual_seed(3), condition=cond)
    again = model.sample(4, generator=torch.Generator().manual_seed(3), condition=cond)
    other = model.sample(4, generator=torch.Generator().manual_seed(4), condition=cond)
    assert first.shape == (4, 2, 16, 16) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first[:, 0], other[:, 0])
    assert torch.equal(first[:, 1], cond[:, 1])  # the label is the conditioning mask
    assert model.latent_dim == 16 * 16  # z is x_T of the image channel only


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_background_context_keeps_the_real_slice_outside_the_region(sampler):
    model = _build(sampler=sampler, context="background", context_margin_px=1)
    cond = _toy_pairs(4)
    cond[:, 0] = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen: list[torch.Tensor] = []
    model.unet.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    drawn = model.sample(4, generator=torch.Generator().manual_seed(0), condition=cond)
    region = drawn_region(cond[:, 1:], 1)[:, 0] > 0
    assert torch.equal(drawn[:, 0][~region], cond[:, 0][~region])  # exactly the real pixels
    assert not torch.equal(drawn[:, 0][region], cond[:, 0][region])  # the region is drawn
    # The denoiser sees [x_t, mask, real slice with the region blanked to -1] at every step.
    x = seen[-1]
    assert x.shape == (4, 3, 16, 16) and torch.equal(x[:, 1], cond[:, 1])
    assert torch.equal(x[:, 2], torch.where(region, -1.0, cond[:, 0]))


class _VelocityOracle(torch.nn.Module):
    """v(x_t, t) = (x0 - x_t) / (t / T): the rectified-flow velocity x0 - eps of the straight
    path x_t = (1 - t/T) x0 + (t/T) eps through a fixed x0 (reads the image channel only)."""

    def __init__(self, x0: torch.Tensor, num_train_timesteps: int) -> None:
        super().__init__()
        self.x0, self.T = x0, num_train_timesteps

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None) -> torch.Tensor:
        s = (timesteps.float() / self.T).view(-1, 1, 1, 1)
        return (self.x0 - x[:, :1]) / s


def test_rflow_regresses_the_velocity_and_its_euler_steps_follow_it():
    """A network that predicts x0 - eps exactly costs 0 (the target is MONAI's velocity), and
    Euler steps along that velocity land on x0 from any x_T, in any number of steps."""
    data = _toy_pairs(4)
    model = _build(sampler="rflow", num_train_timesteps=1000, sample_steps=4)
    model.unet = _VelocityOracle(data[:, :1], 1000)
    torch.manual_seed(0)  # timesteps 1..999 for these four draws: the oracle divides by t
    assert model.losses(data)["mse"] < 1e-6
    z = torch.randn(4, model.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(model.decode(z, data)[:, 0], data[:, 0], atol=1e-5)


def test_bad_config_is_refused_by_name():
    with pytest.raises(ValidationError, match=r"sample_steps \(9\) must be <= num_train_time"):
        _build(sample_steps=9)  # more than the 8 training timesteps
    with pytest.raises(ValidationError, match="sampler"):
        _build(sampler="euler")
    with pytest.raises(ValidationError, match="context"):
        _build(context="everything")
    with pytest.raises(ValidationError, match="ddim_steps"):
        _build(ddim_steps=3)  # the DDPM's name; here sample_steps counts for either sampler
    with pytest.raises(ValueError, match=r"channels=2"):
        build_model("cddpm", tiny_config("cddpm", {}), 1, 16)  # trains on (image, mask) pairs
    with pytest.raises(ValueError, match=r"\(B, 256\)"):
        _build().decode(torch.zeros(2, 512), _toy_pairs(2))
