"""VAE/GAN: Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric".

The reconstruction error is measured in the feature space of the discriminator's l-th layer
(eq. 8-9): p(Dis_l(x) | z) = N(Dis_l(x) | Dis_l(x~), I), i.e. L_llike = 1/2 ||Dis_l(x) -
Dis_l(x~)||^2 up to a constant. The discriminator sees real x, reconstructions x~ = Dec(Enc(x))
and prior samples x_p = Dec(z_p) (eq. 10).

Algorithm 1 updates the encoder with L_prior + L_llike and the decoder with gamma * L_llike -
L_GAN. The trainer has one encoder/decoder optimizer, so the two gradients are routed inside a
single loss: the decoder is run once on z with its gradient scaled by 1/gamma (the L_llike path)
and once on [z detached; z_p] (the GAN path), and total = kl_weight * L_prior + gamma *
L_llike(first) + L_GAN_gen(second). The encoder then receives exactly d(L_prior + L_llike) and
the decoder d(gamma * L_llike + L_GAN_gen). The two calls must stay separate: in train mode
batch norm normalises over the batch of a call, so one call would couple the paths and carry
the GAN term into the encoder through the batch statistics (amplified by 1/gamma). In eval
mode both decodings of z are identical; in train mode they differ only by the dropout mask and
batch statistics of their call.
Generator GAN terms use the non-saturating form -log D(.) (Goodfellow et al. 2014, section 3),
as Larsen's released code does. The discriminator uses layer norm (``critic_norm``) and no
dropout (``critic_dropout`` = 0), so Dis_l of a sample depends neither on the rest of the batch
nor on a random mask: L_llike of x against itself is 0, and the encoder is never asked to
match dropout noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from models.base import kl_standard_normal, reparameterize
from models.blocks import Critic
from models.config import NetConfig
from models.zoo import register
from models.zoo.vae import VAE


class VAEGANConfig(NetConfig):
    """VAE/GAN (Larsen et al. 2016): feature-space reconstruction, eqs. 8-10.

    ``feature_layer`` indexes the discriminator's stage outputs (negative counts from the
    deepest); ``gamma`` weights the feature reconstruction in the decoder update (Algorithm 1).
    """

    n_critic: int = Field(1, ge=1, description="Larsen: one discriminator update per batch")
    gamma: float = Field(1e-2, gt=0.0)
    kl_weight: float = Field(1.0, ge=0.0)
    feature_layer: int = -1


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad * ctx.scale, None


def feature_llike(f_real: Tensor, f_recon: Tensor) -> Tensor:
    """L_llike = 1/2 ||Dis_l(x) - Dis_l(x~)||^2 (Larsen et al. 2016, eq. 9), batch mean.

    (B, F) x2 -> scalar; the constant of the unit-variance Gaussian is dropped.
    """
    return 0.5 * (f_real - f_recon).pow(2).sum(1).mean()


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(
        logits.float(), torch.full_like(logits.float(), target)
    )


@register("vae_gan", VAEGANConfig)
class VAEGAN(VAE):
    """VAE/GAN with feature-space reconstruction (Larsen et al. 2016); see module docstring."""

    name = "vae_gan"
    has_critic = True

    def __init__(self, config: VAEGANConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        c = config
        if not -self.n_stages <= c.feature_layer < self.n_stages:
            raise ValueError(
                f"feature_layer {c.feature_layer} out of range for "
                f"{self.n_stages} discriminator stages at size {size}"
            )
        self.critic = Critic(
            channels, self.widths, c.blocks_per_stage, c.critic_norm, c.critic_dropout
        )

    def _features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(Dis_l(x) flattened (B, F) in fp32, logits (B,))."""
        logits, feats = self.critic(x, with_features=True)
        return feats[self.config.feature_layer].float().flatten(1), logits

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"llike", "kl", "gan", "pixel_rec", "total"}; ``pixel_rec`` (-log p(x|z) in pixel
        space) is logged for comparison only and not trained on."""
        c = self.config
        b = x.shape[0]
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, self.training)
        # Two decoder calls, never one: batch norm would couple the paths (module docstring).
        recon = self.decode(_ScaleGrad.apply(z, 1.0 / c.gamma))  # (B, latent) -> (B, C, H, W)
        z_gan = torch.cat([z.detach(), torch.randn_like(z)])  # [z; z_p], (2B, latent)
        fakes = self.decode(z_gan)  # (2B, latent) -> (2B, C, H, W): [x~; x_p]
        feats, logits = self._features_and_logits(torch.cat([x, recon, fakes]))
        llike = feature_llike(feats[:b], feats[b : 2 * b])  # eq. 9
        kl = kl_standard_normal(mu, logvar).mean()
        gan = 2.0 * _bce(logits[2 * b :], 1.0)  # -log D(x~) - log D(x_p), each a batch mean
        with torch.no_grad():
            pixel_rec = -self.log_px_given_z(x, recon).mean()
        total = c.kl_weight * kl + c.gamma * llike + gan
        return {"llike": llike, "kl": kl, "gan": gan, "pixel_rec": pixel_rec, "total": total}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"real", "fake", "total"}: -L_GAN of eq. 10 as binary cross-entropy."""
        b = x.shape[0]
        with torch.no_grad():
            mu, logvar = self.encode(x)
            z = reparameterize(mu, logvar, self.training)
            fakes = self.decode(torch.cat([z, torch.randn_like(z)]))  # (2B, C, H, W)
        logits = self.critic(torch.cat([x, fakes.to(x.dtype)]))  # (3B,)
        real, fake = _bce(logits[:b], 1.0), _bce(logits[b:], 0.0)
        return {"real": real, "fake": fake, "total": real + 2.0 * fake}
