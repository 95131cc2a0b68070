"""ALI / BiGAN: Dumoulin et al. 2016, "Adversarially Learned Inference"; Donahue et al. 2017,
"Adversarial Feature Learning".

An encoder E, a generator G and ONE discriminator D on (x, z) pairs. D tells encoder pairs
(x, E(x)), x ~ data, from generator pairs (G(z), z), z ~ N(0, I); E and G are trained to fool
it. The value function (ALI eq. 1; BiGAN section 3) is

    min_{E,G} max_D  E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))].

At its optimum the two joint distributions match, so E inverts G. Training follows ALI's
Algorithm 1 with the non-saturating form on the encoder/generator side, the labels swapped:

    L_D  = -log D(x, E(x)) - log(1 - D(G(z), z))
    L_EG = -log(1 - D(x, E(x))) - log D(G(z), z)

(each term a batch mean). The encoder is Gaussian, E(x) = mu(x) + sigma(x) * eps, as ALI's
(sampled with the reparameterisation trick); BiGAN's encoder is deterministic. Gaussian keeps
the registry's ``encode(x) -> (mu, logvar)`` contract, and in eval mode z = mu, so
``forward(x).recon`` = G(E(x)) with the posterior mean: the reconstruction evaluation reads.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from models.base import reparameterize
from models.blocks import Critic
from models.config import NetConfig
from models.zoo import register
from models.zoo.aae import code_discriminator
from models.zoo.gan import discriminator_loss, nonsaturating_loss
from models.zoo.vae import VAE


class ALIConfig(NetConfig):
    """ALI / BiGAN (Dumoulin et al. 2016; Donahue et al. 2017): one discriminator on (x, z).

    The discriminator joins the image critic's top features with an MLP embedding of z
    (``code_hidden`` units, ``code_layers`` layers) and scores the pair with one more MLP layer.
    """

    n_critic: int = Field(1, ge=1, description="ALI, Algorithm 1: one update per batch")
    code_hidden: int = Field(64, ge=1, description="hidden units of the z and joint paths")
    code_layers: int = Field(2, ge=1, description="hidden layers of the z path")


class JointCritic(nn.Module):
    """D(x, z): (B, C, H, W), (B, latent) -> (B,) logit that (x, z) is an encoder pair (x, E(x)).

    The layout of ALI's discriminator (Dumoulin et al. 2016): an image path D(x), a code path
    D(z) and a joint path D(x, z) on their concatenated features. The image path is the
    registry's ``Critic`` with its scoring head replaced by the identity, so it returns its
    flattened top features; the code path is the adversarial autoencoder's MLP on z without its
    scoring layer. No batch norm: each logit depends on its own pair only.
    """

    def __init__(self, config: ALIConfig, channels: int, widths: list[int]) -> None:
        super().__init__()
        c = config
        self.image = Critic(channels, widths, c.blocks_per_stage, c.critic_norm, c.critic_dropout)
        self.image.head = nn.Identity()
        self.code = code_discriminator(c.latent_dim, c.code_hidden, c.code_layers)[:-2]
        self.joint = nn.Sequential(
            nn.Linear(widths[-1] * 16 + c.code_hidden, c.code_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(c.code_hidden, 1),
        )

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        if x.shape[0] != z.shape[0]:
            raise ValueError(f"x and z batches differ: {x.shape[0]} vs {z.shape[0]}")
        hx = self.image(x)  # (B, C, H, W) -> (B, w_top * 4 * 4)
        hz = self.code(z)  # (B, latent) -> (B, code_hidden)
        return self.joint(torch.cat([hx, hz.to(hx.dtype)], dim=1)).squeeze(1)  # -> (B,)


@register("ali", ALIConfig)
class ALI(VAE):
    """ALI / BiGAN with a Gaussian encoder and a joint (x, z) discriminator ``critic``."""

    name = "ali"
    has_critic = True

    def __init__(self, config: ALIConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        self.critic = JointCritic(config, channels, self.widths)

    def pairs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """What D scores: images [x; G(z)] (2B, C, H, W) and codes [E(x); z] (2B, latent).

        Row i of both is one pair: the first B rows are encoder pairs (x, E(x)), the last B
        generator pairs (G(z), z), z ~ N(0, I). Gradients flow to E and G unless disabled.
        """
        mu, logvar = self.encode(x)
        z_enc = reparameterize(mu, logvar, self.training)  # E(x): (B, C, H, W) -> (B, latent)
        z_prior = torch.randn_like(z_enc)
        x_gen = self.decode(z_prior)  # G(z): (B, latent) -> (B, C, H, W)
        return torch.cat([x, x_gen.to(x.dtype)]), torch.cat([z_enc, z_prior])

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"enc", "gen", "total"}: enc = -log(1 - D(x, E(x))), gen = -log D(G(z), z)."""
        b = x.shape[0]
        logits = self.critic(*self.pairs(x))  # (2B,)
        # -log(1 - sigmoid(l)) = -log sigmoid(-l): the encoder pairs' term with the label swapped.
        enc, gen = nonsaturating_loss(-logits[:b]), nonsaturating_loss(logits[b:])
        return {"enc": enc, "gen": gen, "total": enc + gen}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"real", "fake", "total"}: -log D(x, E(x)) and -log(1 - D(G(z), z)), summed."""
        b = x.shape[0]
        with torch.no_grad():
            images, codes = self.pairs(x)
        logits = self.critic(images, codes)  # (2B,)
        return discriminator_loss(logits[:b], logits[b:])  # encoder pairs are D's "real"
