"""GVAE: A. Sagar, "Generate High Fidelity Images With Generative Variational Autoencoder" (2020).

A VAE encoder E and generator G trained as ONE network against a WGAN-GP critic D.

Reading implemented here, where the paper is ambiguous or contradicts itself (its full tables
are not available to us, so each choice is stated):

* 2D convolutions. The text speaks of 3D convolutions but the layer tables are 2D, and our
  inputs (MNIST, Fashion-MNIST, CT slices) are 2D images.
* Output channels = input channels (1 for MNIST, 2 for CT image + mask), not the fixed 3
  channels of the paper's RGB setting, so G(z) lives in the data space the critic judges.
* Batch 32 and Adam with lr 1e-4 (the paper also mentions batch 16 and lr 5e-4); these live in
  ``TrainConfig`` and are the values the pipeline's params use for paper-scale runs.
* Latent size 1000 (Table 5) is a params value; the CPU profile default is smaller.
* ResNet blocks with pooling/upsampling, 30% dropout and batch norm in E and G only. The
  critic uses layer norm instead of batch norm: the WGAN-GP penalty is a per-sample gradient
  norm, which batch norm invalidates by coupling the samples of a batch (Gulrajani et al. 2017,
  section 4). It has no dropout either (``critic_dropout`` = 0): with dropout every forward pass
  is a different random critic, so the penalty would constrain another function than the one
  the Wasserstein estimate uses (Gulrajani et al. 2017, eq. 3).
* The critic sees real images x, reconstructions G(E(x)) and prior samples G(z); the Wasserstein
  terms and the gradient penalty (on interpolates between x and each kind of fake) are averaged
  over the two kinds of fake.

Encoder/generator loss (one optimizer over E and G):
    rec_weight * (-log p(x | z)) + kl_weight * KL(q(z|x) || N(0, I))
    + adv_weight * (-(E[D(G(E(x)))] + E[D(G(z))]) / 2),
with z = mu + sigma * eps (Kingma & Welling 2014, eq. 4) for the reconstruction path.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from models.base import kl_standard_normal, reparameterize
from models.blocks import Critic
from models.config import NetConfig
from models.zoo import register
from models.zoo.vae import VAE
from models.zoo.wgan_gp import wasserstein_critic_loss


class GVAEConfig(NetConfig):
    """GVAE (Sagar 2020): VAE encoder + generator trained with a WGAN-GP critic."""

    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0.0)
    rec_weight: float = Field(1.0, ge=0.0)
    kl_weight: float = Field(1.0, ge=0.0)
    adv_weight: float = Field(1.0, ge=0.0)


@register("gvae", GVAEConfig)
class GVAE(VAE):
    """VAE encoder + generator with a WGAN-GP critic (Sagar 2020); see the module docstring."""

    name = "gvae"
    has_critic = True

    def __init__(self, config: GVAEConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        c = config
        self.critic = Critic(
            channels, self.widths, c.blocks_per_stage, c.critic_norm, c.critic_dropout
        )

    def _fakes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(recon G(E(x)), prior sample G(z), mu, logvar); both fakes (B, C, H, W)."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, self.training)
        z_prior = torch.randn_like(mu)  # (B, latent)
        # One generator call for both kinds of fake: (2B, latent) -> (2B, C, H, W); in train
        # mode batch norm thus normalises posterior and prior codes together, as one batch.
        # That coupling is harmless here (unlike VAE/GAN's routed paths): E and G are one
        # network trained on the plain sum of the losses, with no per-path gradient routing.
        recon, prior = self.decode(torch.cat([z, z_prior])).chunk(2)
        return recon, prior, mu, logvar

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"rec", "kl", "adv", "total"} of the encoder/generator update (module docstring)."""
        c = self.config
        recon, prior, mu, logvar = self._fakes(x)
        rec = -self.log_px_given_z(x, recon).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        scores = self.critic(torch.cat([recon, prior])).float()  # (2B, C, H, W) -> (2B,)
        adv = -scores.mean()  # = -(E[D(G(E(x)))] + E[D(G(z))]) / 2, equal batch sizes
        total = c.rec_weight * rec + c.kl_weight * kl + c.adv_weight * adv
        return {"rec": rec, "kl": kl, "adv": adv, "total": total}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"wdist", "gp", "total"}: WGAN-GP critic loss against recon and prior fakes."""
        with torch.no_grad():
            recon, prior, _, _ = self._fakes(x)
        return wasserstein_critic_loss(self.critic, x, [recon, prior], self.config.gp_weight)
