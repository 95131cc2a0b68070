"""Constrained VAE-GAN: the VAE/GAN objective with the adversarial term as a hinge constraint.

    min  L_VAE + lambda * max(L_GAN - d, 0)

after Mi, Shen & Zhang (2017); the formula is the one implemented here, read as a penalty
method for the constrained problem min L_VAE subject to L_GAN <= d. L_VAE is the VAE part of
Larsen et al.'s VAE/GAN (``models.zoo.vae_gan``): kl_weight * L_prior + gamma * L_llike, the
reconstruction measured in the discriminator's features (Larsen et al. 2016, eq. 9). L_GAN is
VAE/GAN's generator term -log D(x~) - log D(x_p) (non-saturating, Goodfellow et al. 2014,
section 3). While the fakes fool the discriminator at least to the level d the adversarial
term is inactive and the model trains as a VAE; above it, the excess is penalised with weight
lambda. Everything else (networks, Larsen's gradient routing between encoder and decoder,
the discriminator's loss) is VAE/GAN's, inherited.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from models.zoo import register
from models.zoo.vae_gan import VAEGAN, VAEGANConfig


class ConstrainedVAEGANConfig(VAEGANConfig):
    """VAE/GAN with the adversarial term as a hinge constraint L_GAN <= d.

    Default d = 2 ln 2: L_GAN = -log D(x~) - log D(x_p) when the discriminator says 1/2 to
    both kinds of fake, so the hinge acts only while the fakes are told apart.
    """

    hinge_weight: float = Field(1.0, ge=0.0, description="lambda of lambda * max(L_GAN - d, 0)")
    gan_bound: float = Field(2.0 * math.log(2.0), ge=0.0, description="d, the bound on L_GAN")


def hinge(value: Tensor, bound: float) -> Tensor:
    """max(value - bound, 0), elementwise: 0 where the constraint value <= bound holds."""
    return torch.relu(value - bound)


@register("constrained_vae_gan", ConstrainedVAEGANConfig)
class ConstrainedVAEGAN(VAEGAN):
    """VAE/GAN with total = kl_weight * kl + gamma * llike + hinge_weight * max(gan - d, 0)."""

    name = "constrained_vae_gan"

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """VAE/GAN's {"llike", "kl", "gan", "pixel_rec"} plus "hinge"; "total" as in the class.

        ``gan`` is logged unweighted; only its excess over ``gan_bound`` enters the total.
        """
        c = self.config
        terms = super().losses(x)
        penalty = hinge(terms["gan"], c.gan_bound)
        total = c.kl_weight * terms["kl"] + c.gamma * terms["llike"] + c.hinge_weight * penalty
        return {**terms, "hinge": penalty, "total": total}
