"""Validated configurations of the generative models and of the one trainer.

Pure pydantic (no torch import), so ``params.yaml`` can be validated without loading a network.
Every class forbids unknown keys and is frozen (see ``pipeline.params.loader.Frozen``). The defaults
are the small CPU profile (32x32, ~1500 steps in minutes); paper-scale values are noted beside
each field and belong in ``params.yaml``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from common.frozen import Frozen

Likelihood = Literal["bernoulli", "gaussian"]
# Critics never use batch norm: the WGAN-GP penalty is a per-sample gradient norm, and batch
# norm makes each critic output depend on the whole batch (Gulrajani et al. 2017, section 4).
CriticNorm = Literal["layer", "instance", "none"]


class NetConfig(Frozen):
    """Architecture shared by every model: ResNet stages scaled by ``width`` and depth.

    The number of down/up-sampling stages is not configured: it follows from the image size
    (every stage halves the resolution until 4x4).
    """

    latent_dim: int = Field(32, ge=1, description="size of z (GVAE paper, Table 5: 1000)")
    width: int = Field(8, ge=1, description="channels of the full-resolution stem")
    max_width: int = Field(64, ge=1, description="channel cap; width doubles per stage")
    blocks_per_stage: int = Field(1, ge=1, description="residual blocks per resolution")
    dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="encoder/generator dropout (GVAE paper: 30%)"
    )
    critic_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "critic/discriminator dropout. 0 keeps the critic a deterministic function: "
            "Larsen et al. 2016 measure reconstructions in its features Dis_l (eq. 9), which "
            "dropout would make differ between x and x itself, and the WGAN-GP penalty must "
            "constrain the same function the Wasserstein term estimates with (Gulrajani et al. "
            "2017, eq. 3), not another random mask"
        ),
    )
    likelihood: Likelihood = "bernoulli"
    sigma: float = Field(0.1, gt=0.0, description="pixel std of the gaussian likelihood")
    critic_norm: CriticNorm = "layer"

    @model_validator(mode="after")
    def _widths(self) -> NetConfig:
        if self.max_width < self.width:
            raise ValueError(f"max_width ({self.max_width}) must be >= width ({self.width})")
        return self


class VAEConfig(NetConfig):
    """VAE / beta-VAE: loss = -log p(x|z) + beta * KL (Higgins et al. 2017, eq. 4)."""

    beta: float = Field(1.0, ge=0.0)


class BetaVAEConfig(VAEConfig):
    """beta-VAE defaults: the same model as the VAE with beta = 4 (Higgins et al. 2017)."""

    beta: float = Field(4.0, ge=0.0)


class WGANGPConfig(NetConfig):
    """WGAN-GP (Gulrajani et al. 2017, Algorithm 1): n_critic = 5, lambda = 10."""

    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0.0)


class VAEGANConfig(NetConfig):
    """VAE/GAN (Larsen et al. 2016): feature-space reconstruction, eqs. 8-10.

    ``feature_layer`` indexes the discriminator's stage outputs (negative counts from the
    deepest); ``gamma`` weights the feature reconstruction in the decoder update (Algorithm 1).
    """

    n_critic: int = Field(1, ge=1, description="Larsen: one discriminator update per batch")
    gamma: float = Field(1e-2, gt=0.0)
    kl_weight: float = Field(1.0, ge=0.0)
    feature_layer: int = -1


class GVAEConfig(NetConfig):
    """GVAE (Sagar 2020): VAE encoder + generator trained with a WGAN-GP critic."""

    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0.0)
    rec_weight: float = Field(1.0, ge=0.0)
    kl_weight: float = Field(1.0, ge=0.0)
    adv_weight: float = Field(1.0, ge=0.0)


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


class ALIConfig(NetConfig):
    """ALI / BiGAN (Dumoulin et al. 2016; Donahue et al. 2017): one discriminator on (x, z).

    The discriminator joins the image critic's top features with an MLP embedding of z
    (``code_hidden`` units, ``code_layers`` layers) and scores the pair with one more MLP layer.
    """

    n_critic: int = Field(1, ge=1, description="ALI, Algorithm 1: one update per batch")
    code_hidden: int = Field(64, ge=1, description="hidden units of the z and joint paths")
    code_layers: int = Field(2, ge=1, description="hidden layers of the z path")


class DDPMConfig(Frozen):
    """DDPM (Ho et al. 2020) trained on L_simple, sampled with deterministic DDIM (Song et al.).

    The network is MONAI's ``DiffusionModelUNet``: ``channels`` per level (each level but the
    last halves the resolution), ``attention_levels`` per level (off: the CPU profile's speed),
    ``num_res_blocks`` per level. Ho et al.'s CIFAR-10 values (channels 128-256-256-256,
    attention at 16x16, 2 blocks, T = 1000) belong in params for GPU runs.
    """

    # The base model reads ``latent_dim`` from its config; a diffusion model's latent is its
    # initial noise x_T, whose size the image geometry sets, so the model overrides it.
    latent_dim: ClassVar[int] = 0

    channels: tuple[int, ...] = Field((16, 32, 32), min_length=2)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1, description="group norm groups; divides every level")
    num_head_channels: int = Field(8, ge=1, description="channels per attention head")
    num_train_timesteps: int = Field(1000, ge=2, description="T (Ho et al. 2020: 1000)")
    schedule: Literal["linear_beta", "scaled_linear_beta"] = "linear_beta"
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0, description="beta_1 (Ho et al.: 1e-4)")
    beta_end: float = Field(0.02, gt=0.0, lt=1.0, description="beta_T (Ho et al.: 0.02)")
    ddim_steps: int = Field(50, ge=1, description="network calls per DDIM sample")

    @model_validator(mode="after")
    def _levels(self) -> DDPMConfig:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(
                f"attention_levels ({len(self.attention_levels)}) needs one entry per level "
                f"of channels ({len(self.channels)})"
            )
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"channels {bad} are not multiples of norm_num_groups ({self.norm_num_groups})"
            )
        if self.ddim_steps > self.num_train_timesteps:
            raise ValueError(
                f"ddim_steps ({self.ddim_steps}) must be <= num_train_timesteps "
                f"({self.num_train_timesteps})"
            )
        if self.beta_start >= self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must be < beta_end ({self.beta_end})")
        return self


class TrainConfig(Frozen):
    """The one trainer's settings (``models.train.trainer.train``).

    ``critic_lr``/``critic_betas`` default to ``lr``/``adam_betas``. WGAN-GP's paper values are
    lr 1e-4 with betas (0, 0.9) for both networks; GVAE's are Adam, lr 1e-4, batch 32.
    ``optimizer`` applies to both networks; the betas are Adam's only.
    """

    steps: int = Field(1500, ge=1, description="encoder/generator updates")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "rmsprop"] = Field(
        "adam", description="rmsprop: WGAN's weight-clipping algorithm (Arjovsky et al. 2017)"
    )
    lr: float = Field(1e-4, gt=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    critic_lr: float | None = Field(None, gt=0.0)
    critic_betas: tuple[float, float] | None = None
    checkpoint_every: int = Field(500, ge=1)
    sample_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    grid: int = Field(8, ge=1, description="sample PNGs show grid x grid images")
    # Samples kept at every ``sample_every`` step (samples/step-XXXXXX.npz) for the evaluate
    # stage's diversity trajectory and mode-collapse flag; 0 = PNG grids only.
    snapshot_samples: int = Field(0, ge=0, description="samples saved per sample_every step")
    seed: int = 0
    grad_clip: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # NHWC layout: oneDNN's convolutions run 10-25% faster per step on 2 CPU cores (measured on
    # every critic model at 32 px), and it is the layout GPU tensor cores want.
    channels_last: bool = True

    @model_validator(mode="after")
    def _betas(self) -> TrainConfig:
        for name in ("adam_betas", "critic_betas"):
            betas = getattr(self, name)
            if betas is not None and not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError(f"{name} must lie in [0, 1), got {betas}")
        return self
