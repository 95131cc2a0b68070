"""Adversarial autoencoder: Makhzani et al. 2015, "Adversarial Autoencoders", section 2.

The VAE's KL(q(z|x) || p(z)) is replaced by an adversarial game in code space: a code
discriminator D_z (an MLP on z) tells prior samples z ~ p(z) = N(0, I) from codes z ~ q(z|x),
and the encoder, the GAN's generator here, learns to fool it, which matches the aggregated
posterior q(z) to p(z). Each mini-batch runs the paper's two phases: the regularisation phase's
discriminator update is the trainer's critic step (``critic_loss``), and the reconstruction
phase and the encoder's adversarial update form the generator step (``losses``).

Choices: q(z|x) is the Gaussian posterior of section 2.1's second option, z = mu + sigma * eps
(the VAE's encoder, so the VAE output contract and the likelihood metrics apply unchanged); the
reconstruction is -log p(x|z) under the configured likelihood; the encoder's adversarial loss
is the non-saturating -log D_z(z) (Goodfellow et al. 2014, section 3).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from models.base import reparameterize
from models.config import NetConfig
from models.zoo import register
from models.zoo.gan import discriminator_loss, nonsaturating_loss
from models.zoo.vae import VAE


class AAEConfig(NetConfig):
    """Adversarial autoencoder (Makhzani et al. 2015, section 2) with a code discriminator."""

    n_critic: int = Field(1, ge=1, description="code-discriminator updates per batch")
    adv_weight: float = Field(1.0, ge=0.0, description="weight of the encoder's adversarial term")
    code_hidden: int = Field(256, ge=1, description="code discriminator width (paper: 1000)")
    code_layers: int = Field(2, ge=1, description="hidden layers of the code discriminator")


def code_discriminator(latent_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """MLP D_z: (B, latent) -> (B,) logits; ``layers`` hidden Linear + LeakyReLU(0.2) layers.

    Makhzani et al. use two hidden layers of 1000 units on MNIST.
    """
    dims = [latent_dim] + [hidden] * layers
    body: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        body += [nn.Linear(d_in, d_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(*body, nn.Linear(dims[-1], 1), nn.Flatten(0))


@register("aae", AAEConfig)
class AAE(VAE):
    """The VAE's encoder and generator with a code discriminator as critic; see the module."""

    name = "aae"
    has_critic = True

    def __init__(self, config: AAEConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        self.critic = code_discriminator(config.latent_dim, config.code_hidden, config.code_layers)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"rec", "adv", "total"}: rec = mean -log p(x|z), adv = -E[log D_z(z)], z ~ q(z|x)."""
        out = self(x)
        rec = -self.log_px_given_z(x, out.recon).mean()
        adv = nonsaturating_loss(self.critic(out.z))
        return {"rec": rec, "adv": adv, "total": rec + self.config.adv_weight * adv}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"real", "fake", "total"}: D_z's cross-entropy, prior samples real, codes fake."""
        b = x.shape[0]
        with torch.no_grad():
            mu, logvar = self.encode(x)
            codes = reparameterize(mu, logvar, self.training)  # (B, latent)
        logits = self.critic(torch.cat([torch.randn_like(codes), codes]))  # (2B, latent) -> (2B,)
        return discriminator_loss(logits[:b], logits[b:])
