"""alpha-GAN: Rosca et al. 2017, "Variational Approaches for Auto-Encoding Generative
Adversarial Networks", Algorithm 1.

Four networks: encoder E (q(z|x)), generator G, image discriminator D and code discriminator
C. The intractable likelihood is replaced by an L1 reconstruction plus a synthetic likelihood
from D, and the KL term by C's estimate of the prior/posterior density ratio. With x^ = G(z^),
z^ ~ q(z|x), and x_p = G(z), z ~ N(0, I), Algorithm 1 updates

* the encoder with  lambda ||x - x^||_1 + A(C(z^)),
* the generator with  lambda ||x - x^||_1 + A(D(x^)) + A(D(x_p)),
* D with  -log D(x) - log(1 - D(x^)) - log(1 - D(x_p)),
* C with  -log C(z) - log(1 - C(z^))  (prior samples real, posterior codes fake: C's role
  as the prior/posterior ratio estimator; the first arXiv version prints the two swapped),

where A(.) = -log(D / (1 - D)) (``adv_form: ratio``, minus the logit) or the non-saturating
-log D (``adv_form: non_saturating``). Choices where the paper leaves room, stated:

* q(z|x) is the registry's diagonal-Gaussian encoder (z^ = mu + sigma * eps): Algorithm 1 only
  needs samples of q, and the Gaussian keeps ``encode(x) -> (mu, logvar)`` for evaluation.
* ||.||_1 is summed over pixels and averaged over the batch, the scale of a Laplace
  log-likelihood, as the other models' reconstruction terms are sums over pixels.
* One optimizer serves E and G and one both discriminators (the trainer's two sides): the
  encoder/generator loss is the sum above, with the gradients routed as in Algorithm 1. The
  generator is run twice, once on z^ for the L1 path (E and G) and once on [z^ detached; z]
  for the image-adversarial terms (G only), so the encoder never receives D's gradient. The
  two calls stay separate because batch norm in train mode normalises over a call's batch.
  D and C have disjoint parameters, so summing their losses updates each with its own.
"""

from __future__ import annotations

from typing import Literal

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


class AlphaGANConfig(NetConfig):
    """alpha-GAN (Rosca et al. 2017, Algorithm 1): an image and a code discriminator.

    ``rec_weight`` is lambda of the L1 reconstruction. ``adv_form`` is the encoder/generator side
    of both adversarial terms: ``ratio`` is Algorithm 1's -log(D / (1 - D)), minus the
    discriminator's logit (its log density-ratio estimate); ``non_saturating`` is -log D
    (Goodfellow et al. 2014, section 3).
    """

    n_critic: int = Field(1, ge=1, description="Algorithm 1: one update per discriminator")
    rec_weight: float = Field(1.0, ge=0.0, description="lambda of ||x - G(E(x))||_1")
    adv_form: Literal["ratio", "non_saturating"] = "ratio"
    code_hidden: int = Field(64, ge=1, description="hidden units of the code discriminator")
    code_layers: int = Field(2, ge=1, description="hidden layers of the code discriminator")


@register("alpha_gan", AlphaGANConfig)
class AlphaGAN(VAE):
    """alpha-GAN (Rosca et al. 2017, Algorithm 1); ``critic`` holds D ("image") and C ("code")."""

    name = "alpha_gan"
    has_critic = True

    def __init__(self, config: AlphaGANConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        c = config
        self.critic = nn.ModuleDict(
            {
                "image": Critic(
                    channels, self.widths, c.blocks_per_stage, c.critic_norm, c.critic_dropout
                ),
                # The adversarial autoencoder's MLP on z (no norm, no dropout).
                "code": code_discriminator(c.latent_dim, c.code_hidden, c.code_layers),
            }
        )

    def _fool(self, logits: Tensor) -> Tensor:
        """A(.) of the module docstring for logits of fakes (or posterior codes): a scalar."""
        if self.config.adv_form == "ratio":
            return -logits.float().mean()  # -log(D / (1 - D)) = -logit
        return nonsaturating_loss(logits)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"rec", "adv", "code_adv", "total"} of the encoder/generator update.

        rec = mean over images of ||x - G(z^)||_1; adv = A(D(x^)) + A(D(x_p)), each a batch
        mean; code_adv = A(C(z^)); total = rec_weight * rec + adv + code_adv.
        """
        c = self.config
        mu, logvar = self.encode(x)
        z_post = reparameterize(mu, logvar, self.training)  # z^ ~ q(z|x): (B, latent)
        recon = self.decode(z_post)  # L1 path, trains E and G: (B, latent) -> (B, C, H, W)
        # Image-adversarial path, trains G only: [x^; x_p] from [z^ detached; z], (2B, C, H, W).
        fakes = self.decode(torch.cat([z_post.detach(), torch.randn_like(z_post)]))
        rec = (x.float() - recon.float()).abs().flatten(1).sum(1).mean()
        adv = 2.0 * self._fool(self.critic["image"](fakes))  # two batch means, summed
        code_adv = self._fool(self.critic["code"](z_post))
        total = c.rec_weight * rec + adv + code_adv
        return {"rec": rec, "adv": adv, "code_adv": code_adv, "total": total}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"image", "code", "total"}: D's and C's logistic losses (module docstring), summed."""
        b = x.shape[0]
        with torch.no_grad():
            mu, logvar = self.encode(x)
            z_post = reparameterize(mu, logvar, self.training)  # (B, latent)
            z_prior = torch.randn_like(z_post)
            fakes = self.decode(torch.cat([z_post, z_prior]))  # [x^; x_p]: (2B, C, H, W)
        img = self.critic["image"](torch.cat([x, fakes.to(x.dtype)]))  # (3B, C, H, W) -> (3B,)
        d = discriminator_loss(img[:b], img[b:])  # fake = the mean over both kinds of fake
        image = d["real"] + 2.0 * d["fake"]
        codes = self.critic["code"](torch.cat([z_prior, z_post]))  # (2B, latent) -> (2B,)
        code = discriminator_loss(codes[:b], codes[b:])["total"]
        return {"image": image, "code": code, "total": image + code}
