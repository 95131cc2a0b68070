"""DDPM: Ho et al. 2020, "Denoising Diffusion Probabilistic Models", sampled with DDIM (Song et
al. 2021, "Denoising Diffusion Implicit Models"): the diffusion reference of the registry.

Training minimises L_simple (Ho et al., eq. 14): E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2
with x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4), t ~ U{0..T-1}, eps ~ N(0, I).
Sampling runs deterministic DDIM (Song et al., eq. 12 with sigma_t = 0, i.e. eta = 0) over
``ddim_steps`` of the T training steps, one network call each. Deterministic DDIM makes x_T the
sample's latent: the model's ``latent_dim`` is C * H * W, ``decode(z)`` reshapes z into x_T and
denoises it, so the base class's ``sample`` (z ~ N(0, I), then ``decode``) and the trainer's
fixed-noise sample grids work unchanged, and a seeded generator gives the same images.

The network is MONAI's ``DiffusionModelUNet`` and the schedule, forward noising and DDIM step
are MONAI's ``DDIMScheduler`` (its ``add_noise`` is the forward process q(x_t | x_0) the DDPM
scheduler also uses). There is no encoder (``has_encoder`` False, as for WGAN-GP), so
evaluation skips the encoder metrics, and no critic. MONAI is imported when a model is built,
not when this module is: the registry imports every model module, and importing ``monai``
costs seconds per process (see :mod:`models.blocks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from common.frozen import Frozen
from models.base import GenerativeModel
from models.zoo import register

if TYPE_CHECKING:
    from monai.networks.schedulers import DDIMScheduler


class DiffusionNetConfig(Frozen):
    """The denoiser and training noise schedule the diffusion models share (``ddpm``, ``cddpm``).

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

    @model_validator(mode="after")
    def _levels(self) -> DiffusionNetConfig:
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
        if self.beta_start >= self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must be < beta_end ({self.beta_end})")
        return self


def check_sample_steps(setting: str, steps: int, num_train_timesteps: int) -> None:
    """``ValueError`` naming ``setting`` unless a sampler's ``steps`` fit in the T training
    timesteps (a sampler visits a subset of them)."""
    if steps > num_train_timesteps:
        raise ValueError(
            f"{setting} ({steps}) must be <= num_train_timesteps ({num_train_timesteps})"
        )


class DDPMConfig(DiffusionNetConfig):
    """DDPM (Ho et al. 2020) trained on L_simple, sampled with deterministic DDIM (Song et al.)."""

    ddim_steps: int = Field(50, ge=1, description="network calls per DDIM sample")

    @model_validator(mode="after")
    def _steps(self) -> DDPMConfig:
        check_sample_steps("ddim_steps", self.ddim_steps, self.num_train_timesteps)
        return self


def diffusion_unet(
    config: DiffusionNetConfig, in_channels: int, out_channels: int, size: int
) -> torch.nn.Module:
    """MONAI's ``DiffusionModelUNet`` of ``config`` for ``size``-pixel images; ``ValueError``
    when ``size`` does not take one halving per level but the last (down to >= 2 px)."""
    from monai.networks.nets import DiffusionModelUNet

    c = config
    downsamples = len(c.channels) - 1
    if size % 2**downsamples or size // 2**downsamples < 2:
        raise ValueError(
            f"size {size} does not allow {downsamples} halvings of channels {c.channels}"
        )
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        num_res_blocks=c.num_res_blocks,
        channels=c.channels,
        attention_levels=c.attention_levels,
        norm_num_groups=c.norm_num_groups,
        num_head_channels=c.num_head_channels,
    )


def ddim_scheduler(config: DiffusionNetConfig) -> DDIMScheduler:
    """MONAI's ``DDIMScheduler`` of ``config``'s beta schedule; each DDIM step clips its
    predicted x_0 to the data range [-1, 1] (``clip_sample``)."""
    from monai.networks.schedulers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        schedule=config.schedule,
        clip_sample=True,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
    )


def noise_prediction_loss(predicted: Tensor, noise: Tensor) -> Tensor:
    """L_simple of Ho et al. 2020, eq. 14: mean squared error of the predicted noise, fp32.

    (B, C, H, W) x2 -> scalar, averaged over every element (the constant factor of the sum
    over pixels does not change the minimiser).
    """
    if predicted.shape != noise.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and noise {tuple(noise.shape)}")
    return F.mse_loss(predicted.float(), noise.float())


@register("ddpm", DDPMConfig)
class DDPM(GenerativeModel):
    """eps_theta(x_t, t) as MONAI's DiffusionModelUNet; see the module docstring."""

    name = "ddpm"

    def __init__(self, config: DDPMConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        self.latent_dim = channels * size * size  # z is x_T, flattened
        self.unet = diffusion_unet(config, channels, channels, size)
        self.scheduler = ddim_scheduler(config)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"mse", "total"}: L_simple for one uniform timestep and noise draw per image."""
        t = torch.randint(0, self.config.num_train_timesteps, (x.shape[0],), device=x.device)
        noise = torch.randn_like(x)
        x_t = self.scheduler.add_noise(x, noise, t)  # q(x_t | x_0), Ho et al. eq. 4
        mse = noise_prediction_loss(self.unet(x_t, timesteps=t), noise)
        return {"mse": mse, "total": mse}

    def decode(self, z: Tensor) -> Tensor:
        """Deterministic DDIM from x_T = z: (B, C * H * W) -> (B, C, H, W) in [-1, 1].

        ``ddim_steps`` network calls on evenly spaced timesteps from T - 1 down to 0.
        """
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"ddpm decodes x_T flattened to (B, {self.latent_dim}), got {tuple(z.shape)}"
            )
        x = z.reshape(z.shape[0], self.channels, self.size, self.size)  # (B, C*H*W) -> (B, C, H, W)
        self.scheduler.set_timesteps(self.config.ddim_steps)
        for t in self.scheduler.timesteps.tolist():
            steps = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            eps = self.unet(x, timesteps=steps)
            x, _ = self.scheduler.step(eps, t, x)  # eta = 0: Song et al. eq. 12, sigma_t = 0
        return x.clamp(-1.0, 1.0)
