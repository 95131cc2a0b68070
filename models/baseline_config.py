"""Validated configurations of the baseline models (AE, beta-TCVAE, GAN family, AAE).

Pure pydantic like ``models.config`` (no torch import). Defaults are the papers' values where a
paper gives one and the small CPU profile otherwise; ``params.yaml`` sets the values runs use.
"""

from __future__ import annotations

import math

from pydantic import Field

from models.config import NetConfig, VAEGANConfig


class AEConfig(NetConfig):
    """Deterministic autoencoder: mean squared reconstruction error only (``models.zoo.ae``)."""

    eval_posterior_std: float = Field(
        0.1,
        gt=0.0,
        description=(
            "std s of the q(z|x) = N(mu, s^2 I) that encode() reports for likelihood "
            "evaluation (ELBO, IWAE stay valid lower bounds for any s); training never samples"
        ),
    )


class BetaTCVAEConfig(NetConfig):
    """beta-TCVAE (Chen et al. 2018, eq. 4): weights of the three KL terms of eq. 2."""

    alpha: float = Field(1.0, ge=0.0, description="index-code mutual information weight")
    beta: float = Field(6.0, ge=0.0, description="total correlation weight (paper: beta > 1)")
    gamma: float = Field(1.0, ge=0.0, description="dimension-wise KL weight")
    dataset_size: int = Field(
        60000,
        ge=1,
        description=(
            "N of the minibatch-weighted sampling estimator (section 4.1); default: the MNIST "
            "training set. It shifts the logged mi/tc/dwkl by constants and leaves the "
            "gradients unchanged"
        ),
    )


class GANConfig(NetConfig):
    """Non-saturating GAN (Goodfellow et al. 2014, Algorithm 1 with k = 1)."""

    n_critic: int = Field(1, ge=1, description="discriminator updates per generator update (k)")


class WGANConfig(NetConfig):
    """WGAN with weight clipping (Arjovsky et al. 2017, Algorithm 1: c = 0.01, n_critic = 5).

    The algorithm's RMSProp with lr 5e-5 is a trainer setting (``optimizer``, ``lr``).
    """

    n_critic: int = Field(5, ge=1)
    clip: float = Field(0.01, gt=0.0, description="critic weights are clamped to [-clip, clip]")


class GANDriftRegConfig(GANConfig):
    """GAN with the generator drift regulariser of Su 2018 (``models.zoo.gan``)."""

    drift_weight: float = Field(
        1.0, ge=0.0, description="lambda of lambda * ||G(z) - G_old(z)||^2 (summed over pixels)"
    )


class ConstrainedVAEGANConfig(VAEGANConfig):
    """VAE/GAN with the adversarial term as a hinge constraint L_GAN <= d.

    Default d = 2 ln 2: L_GAN = -log D(x~) - log D(x_p) when the discriminator says 1/2 to
    both kinds of fake, so the hinge acts only while the fakes are told apart.
    """

    hinge_weight: float = Field(1.0, ge=0.0, description="lambda of lambda * max(L_GAN - d, 0)")
    gan_bound: float = Field(2.0 * math.log(2.0), ge=0.0, description="d, the bound on L_GAN")


class AAEConfig(NetConfig):
    """Adversarial autoencoder (Makhzani et al. 2015, section 2) with a code discriminator."""

    n_critic: int = Field(1, ge=1, description="code-discriminator updates per batch")
    adv_weight: float = Field(1.0, ge=0.0, description="weight of the encoder's adversarial term")
    code_hidden: int = Field(256, ge=1, description="code discriminator width (paper: 1000)")
    code_layers: int = Field(2, ge=1, description="hidden layers of the code discriminator")
