"""cGVAE: the GVAE (Sagar 2020, ``models.zoo.gvae``) made mask-conditioned.

It learns p(image | mask) instead of the joint p(image, mask): the encoder sees the pair,
E(image, mask) -> q(z | image, mask); the generator draws the image for the mask,
G(z, mask) -> image, with the mask injected at every scale by SPADE normalisation (Park et al.
2019, eq. 1; ``models.spade`` says why SPADE rather than concatenation); the WGAN-GP critic
(Gulrajani et al. 2017) judges (image, mask) PAIRS, so an image that does not fit its mask is a
fake even when it looks like CT. This is the family that reported Dice gains in low-data
segmentation (SPADE GANs on label maps: Skandarani et al. 2020, Amirrajab et al. 2020).

How the GVAE's loss is read here, term by term, with the condition m:
    rec_weight * (-log p(image | z, m)) + kl_weight * KL(q(z | image, m) || N(0, I))
    + adv_weight * (-(E[D(G(E(x), m), m)] + E[D(G(z), m), m)]) / 2),
and the critic loss of ``models.zoo.gvae`` on real pairs x = (image, m) against both kinds of
fake pair. The reconstruction term covers the image channel only: the mask is given, not drawn.

``context: background`` (the DiffTumor / MAISI way of keeping the rest real): the real slice
with the mask's region, dilated by ``context_margin_px``, blanked to -1 is a second condition
channel, and the drawn image is the generator's output inside that region and the real slice
outside it. Only the gland and its surroundings are synthetic; the rest of the anatomy is the
source slice's own.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from models.base import GenerativeModel, VAEOutput, reparameterize
from models.blocks import Critic, Encoder, stage_widths
from models.spade import SPADEGenerator
from models.zoo import register
from models.zoo.gvae import GVAE, GVAEConfig


class CGVAEConfig(GVAEConfig):
    """cGVAE: the GVAE's terms and weights, plus how much of the real slice is kept."""

    context: Literal["none", "background"] = "none"
    context_margin_px: int = Field(4, ge=0, description="dilation of the drawn region, pixels")


def drawn_region(mask: Tensor, margin: int) -> Tensor:
    """{0, 1} region the generator draws: the mask ({-1, 1}) dilated by ``margin`` pixels
    (max pooling with a (2 margin + 1)^2 window). (B, 1, H, W) -> (B, 1, H, W)."""
    inside = (mask > 0).to(mask.dtype)
    if margin == 0:
        return inside
    return F.max_pool2d(inside, 2 * margin + 1, stride=1, padding=margin)


def mask_condition(pairs: Tensor, context: str, margin: int) -> tuple[Tensor, Tensor | None]:
    """(condition (B, k, H, W), drawn region (B, 1, H, W) or None) of (image, mask) pairs.

    ``context: none``: the mask alone (k = 1), no region. ``background``: the mask and the real
    image with the drawn region (``drawn_region``) blanked to -1 (k = 2), and that region.
    """
    mask = pairs[:, 1:]
    if context == "none":
        return mask, None
    region = drawn_region(mask, margin)
    background = torch.where(region > 0, torch.full_like(pairs[:, :1], -1.0), pairs[:, :1])
    return torch.cat([mask, background], dim=1), region


@register("cgvae", CGVAEConfig)
class CGVAE(GenerativeModel):
    """Mask-conditioned GVAE; see the module docstring."""

    name = "cgvae"
    has_encoder = True
    has_critic = True
    conditional = True

    def __init__(self, config: CGVAEConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        c = config
        widths = stage_widths(c.width, c.max_width, self.n_stages)
        self.cond_channels = 2 if c.context == "background" else 1
        self.encoder = Encoder(
            channels, c.latent_dim, widths, c.blocks_per_stage, "batch", c.dropout
        )
        self.generator = SPADEGenerator(1, self.cond_channels, c.latent_dim, widths, c.dropout)
        self.critic = Critic(channels, widths, c.blocks_per_stage, c.critic_norm, c.critic_dropout)
        self.widths = widths

    # ----------------------------------------------------------------- condition
    def _draw(self, z: Tensor, pairs: Tensor) -> Tensor:
        """Images (B, 1, H, W) drawn for the masks of ``pairs``; with ``context: background``
        the real image outside the drawn region."""
        cond, region = mask_condition(pairs, self.config.context, self.config.context_margin_px)
        image = self.generator(z, cond)
        if region is not None:
            image = region * image + (1 - region) * pairs[:, :1]
        return image

    # ----------------------------------------------------------------- model interface
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(image, mask) pairs (B, 2, H, W) -> (mu, logvar), each (B, latent)."""
        return self.encoder(x)

    def decode(self, z: Tensor, condition: Tensor | None = None) -> Tensor:
        """(B, latent) and (B, 2, H, W) pairs -> (drawn image, their mask) (B, 2, H, W)."""
        self.check_condition(z.shape[0], condition)
        return torch.cat([self._draw(z, condition), condition[:, 1:]], dim=1)

    def forward(self, x: Tensor) -> VAEOutput:
        """Encode the pair, reparameterise (z = mu in eval mode), redraw the image for its mask."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, self.training)
        return VAEOutput(recon=self.decode(z, x), mu=mu, logvar=logvar, z=z)

    def _fakes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(recon pair, prior pair, mu, logvar): G(E(x), m) and G(z, m) each with mask m."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, self.training)
        z_prior = torch.randn_like(mu)  # (B, latent)
        # One generator call for both kinds of fake, as in the GVAE: (2B, latent) -> (2B, 1, H, W)
        images = self._draw(torch.cat([z, z_prior]), torch.cat([x, x]))
        mask = torch.cat([x[:, 1:], x[:, 1:]])
        recon, prior = torch.cat([images, mask], dim=1).chunk(2)
        return recon, prior, mu, logvar

    def log_px_given_z(self, x: Tensor, recon: Tensor) -> Tensor:
        """log p(image | z, mask), (B,): the image channel only; the mask is given, not drawn."""
        return super().log_px_given_z(x[:, :1], recon[:, :1])

    # The GVAE's own objective, read on pairs: its losses and critic loss only call _fakes,
    # log_px_given_z, critic and config, which this class defines for (image, mask) pairs.
    losses = GVAE.losses
    critic_loss = GVAE.critic_loss
