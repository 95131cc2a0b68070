"""WGAN with weight clipping: Arjovsky, Chintala & Bottou 2017, "Wasserstein GAN", Algorithm 1.

The critic f maximises E[f(x)] - E[f(G(z))] over weights clamped to [-c, c] after every
critic update (line 7), a crude way to keep f K-Lipschitz; the generator minimises
-E[f(G(z))] (line 10). Algorithm 1's defaults: c = 0.01, n_critic = 5 and RMSProp with
lr 5e-5 for both networks (``optimizer: rmsprop`` and ``lr`` in the model's ``train`` block).
WGAN-GP (``models.zoo.wgan_gp``) replaces the clipping by a gradient penalty; this is the original.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from models.config import NetConfig
from models.zoo import register
from models.zoo.gan import real_and_fake_scores
from models.zoo.wgan_gp import WGANGP


class WGANConfig(NetConfig):
    """WGAN with weight clipping (Arjovsky et al. 2017, Algorithm 1: c = 0.01, n_critic = 5).

    The algorithm's RMSProp with lr 5e-5 is a trainer setting (``optimizer``, ``lr``).
    """

    n_critic: int = Field(5, ge=1)
    clip: float = Field(0.01, gt=0.0, description="critic weights are clamped to [-clip, clip]")


@register("wgan", WGANConfig)
class WGAN(WGANGP):
    """WGAN-GP's networks and generator loss, with Algorithm 1's clipped critic instead."""

    name = "wgan"

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"wdist", "total"}: wdist = E[f(x)] - E[f(G(z))] (Algorithm 1, line 5); total -wdist."""
        real, fake = real_and_fake_scores(self, x)
        wdist = real.float().mean() - fake.float().mean()
        return {"wdist": wdist, "total": -wdist}

    @torch.no_grad()
    def after_critic_step(self) -> None:
        """Clamp every critic weight to [-clip, clip] (Algorithm 1, line 7)."""
        c = self.config.clip
        for p in self.critic.parameters():
            p.clamp_(-c, c)
