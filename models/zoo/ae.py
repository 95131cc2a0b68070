"""Deterministic autoencoder: the VAE's networks trained on reconstruction alone.

The baseline without a latent regulariser (Hinton & Salakhutdinov 2006, "Reducing the
dimensionality of data with neural networks"): z = Enc(x), x~ = Dec(z), loss = mean squared
error. Nothing ties the codes to N(0, I), so samples Dec(z), z ~ N(0, I), show what the KL term
(or the adversarial code matching of the AAE) buys.

``encode`` returns ``(mu, logvar)`` like every encoder model, with ``logvar`` fixed at
log(s^2) for ``eval_posterior_std`` s. The choice: the encoder is a point mass, whose KL to the
prior is infinite, so the likelihood metrics (ELBO, IWAE) read q(z|x) = N(mu, s^2 I) instead:
they remain valid lower bounds on log p(x) of the decoder under the N(0, I) prior, only loose.
``forward`` never samples (z = mu in train and eval mode), so the eval contract z == mu holds
and training stays deterministic up to dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from models.base import VAEOutput
from models.config import NetConfig
from models.zoo import register
from models.zoo.vae import VAE


class AEConfig(NetConfig):
    """Deterministic autoencoder: mean squared reconstruction error only."""

    eval_posterior_std: float = Field(
        0.1,
        gt=0.0,
        description=(
            "std s of the q(z|x) = N(mu, s^2 I) that encode() reports for likelihood "
            "evaluation (ELBO, IWAE stay valid lower bounds for any s); training never samples"
        ),
    )


@register("ae", AEConfig)
class AE(VAE):
    """Autoencoder on the VAE's encoder (its mean head) and generator; see the module docstring."""

    name = "ae"
    deterministic_encoder = True

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu, logvar), each (B, latent); logvar = log(s^2) everywhere.

        The encoder's learned log-variance half is discarded (never trained on).
        """
        mu, _ = self.encoder(x)
        logvar = torch.full_like(mu, 2.0 * math.log(self.config.eval_posterior_std))
        return mu, logvar

    def forward(self, x: Tensor) -> VAEOutput:
        """Encode and decode the code itself: z = mu in train and eval mode."""
        mu, logvar = self.encode(x)
        return VAEOutput(recon=self.decode(mu), mu=mu, logvar=logvar, z=mu)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"mse", "total"}: mean over pixels and batch of (x~ - x)^2, computed in fp32."""
        out = self(x)
        mse = F.mse_loss(out.recon.float(), x.float())
        return {"mse": mse, "total": mse}
