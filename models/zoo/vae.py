"""VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017): one class, two names.

``vae`` and ``beta_vae`` are the same network and loss; only the default ``beta`` differs
(1 vs 4), and either can be set in params. The encoder/generator built here are reused by the
VAE/GAN and GVAE models, which subclass ``VAE``.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from models.base import GenerativeModel, VAEOutput, kl_standard_normal, reparameterize
from models.blocks import Encoder, Generator, stage_widths
from models.config import NetConfig
from models.zoo import register


class VAEConfig(NetConfig):
    """VAE / beta-VAE: loss = -log p(x|z) + beta * KL (Higgins et al. 2017, eq. 4)."""

    beta: float = Field(1.0, ge=0.0)


class BetaVAEConfig(VAEConfig):
    """beta-VAE defaults: the same model as the VAE with beta = 4 (Higgins et al. 2017)."""

    beta: float = Field(4.0, ge=0.0)


@register("vae", VAEConfig)
@register("beta_vae", BetaVAEConfig)
class VAE(GenerativeModel):
    """Gaussian-latent VAE with a ResNet encoder and generator.

    Loss per batch (mean over samples): ``rec + beta * kl`` where rec = -log p(x|z) (the
    configured likelihood, see ``models.base.log_likelihood``) and kl = KL(q(z|x) || N(0, I)).
    With beta = 1 this is the negative ELBO of Kingma & Welling 2014, eq. 3 / eq. 10; beta > 1
    is the beta-VAE objective (Higgins et al. 2017, eq. 4).
    """

    name = "vae"
    has_encoder = True

    def __init__(self, config: NetConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        c = config
        widths = stage_widths(c.width, c.max_width, self.n_stages)
        self.encoder = Encoder(
            channels, c.latent_dim, widths, c.blocks_per_stage, "batch", c.dropout
        )
        self.generator = Generator(
            channels, c.latent_dim, widths, c.blocks_per_stage, "batch", c.dropout
        )
        self.widths = widths

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu, logvar), each (B, latent)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent) -> (B, C, H, W) in [-1, 1]."""
        return self.generator(z)

    def forward(self, x: Tensor) -> VAEOutput:
        """Encode, reparameterise (z = mu in eval mode) and decode."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, self.training)
        return VAEOutput(recon=self.decode(z), mu=mu, logvar=logvar, z=z)

    def vae_terms(self, x: Tensor) -> tuple[VAEOutput, Tensor, Tensor]:
        """(output, rec, kl): rec = mean -log p(x|z), kl = mean KL(q(z|x) || N(0, I))."""
        out = self(x)
        rec = -self.log_px_given_z(x, out.recon).mean()
        kl = kl_standard_normal(out.mu, out.logvar).mean()
        return out, rec, kl

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"rec", "kl", "total"}; total = rec + beta * kl (Higgins et al. 2017, eq. 4)."""
        _, rec, kl = self.vae_terms(x)
        return {"rec": rec, "kl": kl, "total": rec + self.config.beta * kl}
