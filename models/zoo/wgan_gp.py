"""WGAN-GP (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs").

A generator and a critic, no encoder. The paper's Algorithm 1 defaults are n_critic = 5,
lambda = 10 and Adam(lr 1e-4, betas (0, 0.9)) for both networks; the betas and learning rates
live in the trainer's config (``TrainConfig.adam_betas`` / ``critic_betas``).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from models.base import GenerativeModel
from models.blocks import Critic, Generator, stage_widths
from models.config import NetConfig
from models.train.speed import eager
from models.zoo import register


class WGANGPConfig(NetConfig):
    """WGAN-GP (Gulrajani et al. 2017, Algorithm 1): n_critic = 5, lambda = 10."""

    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0.0)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Mean over the batch of (||grad_x critic(x_hat)||_2 - 1)^2 (Gulrajani et al., eq. 3).

    x_hat = eps * real + (1 - eps) * fake with eps ~ U[0, 1] per sample (Algorithm 1, lines
    4-6). ``fake`` is detached: the penalty only trains the critic. ``real`` may be shorter
    than ``fake`` by an integer factor (several kinds of fake stacked along the batch); it is
    then repeated. Returns a scalar.
    """
    fake = fake.detach()
    real = real.detach().to(fake.dtype).repeat(fake.shape[0] // real.shape[0], 1, 1, 1)
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)  # (B, C, H, W)
    score = eager(critic)(x_hat)  # (B,); differentiated twice: never a compiled graph
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)  # (B, C, H, W) -> (B,)
    return (norm - 1.0).pow(2).mean()


def wasserstein_critic_loss(
    critic: nn.Module, real: Tensor, fakes: list[Tensor], gp_weight: float
) -> dict[str, Tensor]:
    """Critic loss of Algorithm 1, line 7, averaged over one or more kinds of fake.

    Returns {"wdist", "gp", "total"}: wdist = E[critic(real)] - mean_k E[critic(fake_k)] (the
    Wasserstein estimate), gp = mean_k penalty(real, fake_k), total = -wdist + gp_weight * gp.
    Real and fakes go through the critic as one batch: the critic has no batch norm, so every
    score depends on its own sample only and batching changes nothing but speed. Nor dropout
    (``critic_dropout`` = 0): the penalty differentiates the very function scored here.
    """
    b, k = real.shape[0], len(fakes)
    fake = torch.cat([f.detach().to(real.dtype) for f in fakes])  # k x (B, ...) -> (kB, ...)
    scores = critic(torch.cat([real, fake])).float()  # ((k + 1) B, C, H, W) -> ((k + 1) B,)
    wdist = scores[:b].mean() - scores[b:].view(k, b).mean()
    gp = gradient_penalty(critic, real, fake)
    return {"wdist": wdist, "gp": gp, "total": -wdist + gp_weight * gp}


@register("wgan_gp", WGANGPConfig)
class WGANGP(GenerativeModel):
    """Generator G(z) and critic D(x); generator loss -E[D(G(z))] (Algorithm 1, line 11)."""

    name = "wgan_gp"
    has_critic = True

    def __init__(self, config: WGANGPConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        c = config
        widths = stage_widths(c.width, c.max_width, self.n_stages)
        self.generator = Generator(
            channels, c.latent_dim, widths, c.blocks_per_stage, "batch", c.dropout
        )
        self.critic = Critic(channels, widths, c.blocks_per_stage, c.critic_norm, c.critic_dropout)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent) -> (B, C, H, W) in [-1, 1]."""
        return self.generator(z)

    def _prior(self, n: int, like: Tensor) -> Tensor:
        return torch.randn(n, self.latent_dim, device=like.device)  # (n, latent)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"adv", "total"}: -E[D(G(z))] for a batch of x.shape[0] prior samples."""
        adv = -self.critic(self.decode(self._prior(x.shape[0], x))).float().mean()
        return {"adv": adv, "total": adv}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"wdist", "gp", "total"} for real x against G(z) (Algorithm 1, lines 3-9)."""
        with torch.no_grad():
            fake = self.decode(self._prior(x.shape[0], x))
        return wasserstein_critic_loss(self.critic, x, [fake], self.config.gp_weight)
