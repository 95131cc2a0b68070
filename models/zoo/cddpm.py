"""cDDPM: a mask-conditioned diffusion model, p(image | mask), in the style of Med-DDPM
(Dorjsembe et al. 2024, "Conditional Diffusion Models for Semantic 3D Brain MRI Synthesis") and
SegGuidedDiff (Konz et al. 2024, "Anatomically-Controllable Medical Image Generation with
Segmentation-Guided Diffusion Models"): the condition is concatenated to the noisy image at the
denoiser's input, eps_theta([x_t, c], t), and only the image channel is noised and denoised.

The condition c is the mask; with ``context: background`` also the real slice with the dilated
mask region blanked to -1, and the drawn image is composited: the model's output inside that
region, the real slice outside (``models.zoo.cgvae.context_condition`` and ``keep_context``,
shared with the cGVAE).

``sampler`` picks the noising path, its training target and its few-step sampler:

- ``ddim``: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4), trained on
  L_simple, ||eps - eps_theta||^2 (eq. 14), sampled by deterministic DDIM (Song et al. 2021,
  eq. 12 with sigma_t = 0), exactly as ``models.zoo.ddpm``.
- ``rflow``: rectified flow (Liu et al. 2022, "Flow Straight and Fast", eq. 1; Esser et al.
  2024, "Scaling Rectified Flow Transformers", section 3.1, z_t = (1 - t) x_0 + t eps): the
  straight path x_t = (1 - t/T) x_0 + (t/T) eps, trained on ||(x_0 - eps) - v_theta||^2, the
  velocity MONAI's ``RFlowScheduler`` steps with (as MAISI trains it), sampled by Euler steps
  x_{t'} = x_t + (t - t')/T v_theta from t = T (pure noise) to 0. Timesteps are drawn
  uniformly (Liu et al.), not from Esser et al.'s logit-normal.

Both samplers are deterministic, so x_T is the sample's latent as in ``models.zoo.ddpm``:
``latent_dim`` is H * W (one image channel), ``decode(z, condition)`` reshapes z into x_T and
denoises it, and the base class's seeded ``sample(n, generator, condition)`` repeats itself.
The concatenation, the forward noising and the sampling loop are MONAI's ``DiffusionInferer``
in ``mode="concat"``; it steps DDIM and RFlow schedulers alike (RFlow's step takes the next
timestep, which the inferer passes).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from models.base import GenerativeModel
from models.zoo import register
from models.zoo.cgvae import context_condition, keep_context
from models.zoo.ddpm import (
    DiffusionNetConfig,
    check_sample_steps,
    ddim_scheduler,
    diffusion_unet,
    noise_prediction_loss,
)


class CDDPMConfig(DiffusionNetConfig):
    """The DDPM's denoiser and schedule (``schedule`` and the betas are DDIM's; rflow's path is
    linear), plus the sampler, its step count and how much of the real slice is kept."""

    sampler: Literal["ddim", "rflow"] = "ddim"
    sample_steps: int = Field(20, ge=1, description="network calls per sample")
    context: Literal["none", "background"] = "none"
    context_margin_px: int = Field(4, ge=0, description="dilation of the drawn region, pixels")

    @model_validator(mode="after")
    def _steps(self) -> CDDPMConfig:
        check_sample_steps("sample_steps", self.sample_steps, self.num_train_timesteps)
        return self


@register("cddpm", CDDPMConfig)
class CDDPM(GenerativeModel):
    """eps_theta / v_theta([x_t, condition], t) as MONAI's DiffusionModelUNet; see the module
    docstring."""

    name = "cddpm"
    conditional = True

    def __init__(self, config: CDDPMConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        from monai.inferers import DiffusionInferer
        from monai.networks.schedulers import RFlowScheduler

        c = config
        self.latent_dim = size * size  # z is x_T of the one image channel, flattened
        cond_channels = 2 if c.context == "background" else 1
        self.unet = diffusion_unet(c, 1 + cond_channels, 1, size)
        if c.sampler == "ddim":
            scheduler = ddim_scheduler(c)
        else:  # integer timesteps drawn uniformly from [0, T)
            scheduler = RFlowScheduler(c.num_train_timesteps, sample_method="uniform")
        # The scheduler lives in the inferer (a plain object), not as a submodule: it holds no
        # weights (the config rebuilds it), and MONAI's RFlowScheduler is an nn.Module whose
        # __init__ skips nn.Module's, so registering it breaks module walks such as .eval().
        self.inferer = DiffusionInferer(scheduler)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"mse", "total"}: the sampler's regression loss (module docstring) for one timestep
        and noise draw per (image, mask) pair; the image channel only, the mask is given."""
        image = x[:, :1]  # (B, 2, H, W) -> (B, 1, H, W)
        cond, _ = context_condition(x, self.config.context, self.config.context_margin_px)
        noise = torch.randn_like(image)
        if self.config.sampler == "ddim":
            t = torch.randint(0, self.config.num_train_timesteps, (len(x),), device=x.device)
            target = noise  # Ho et al. eq. 14
        else:
            t = self.inferer.scheduler.sample_timesteps(image)
            target = image - noise  # d x_t / d(-t/T): the velocity RFlowScheduler.step adds
        predicted = self.inferer(image, self.unet, noise, t, condition=cond, mode="concat")
        mse = noise_prediction_loss(predicted, target)  # eq. 14's MSE, on either target
        return {"mse": mse, "total": mse}

    def decode(self, z: Tensor, condition: Tensor | None = None) -> Tensor:
        """Denoise x_T = z for the masks of ``condition``: (B, H * W) and (B, 2, H, W) pairs
        -> (drawn image in [-1, 1], its mask) (B, 2, H, W); ``sample_steps`` network calls."""
        self.check_condition(z.shape[0], condition)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"cddpm decodes x_T flattened to (B, {self.latent_dim}), got {tuple(z.shape)}"
            )
        c = self.config
        cond, region = context_condition(condition, c.context, c.context_margin_px)
        x_t = z.reshape(len(z), 1, self.size, self.size)  # (B, H*W) -> (B, 1, H, W)
        # Timesteps stay on the CPU: the inferer appends a CPU 0 as the last "next" timestep.
        self.inferer.scheduler.set_timesteps(self.config.sample_steps)
        image = self.inferer.sample(
            x_t, self.unet, conditioning=cond, mode="concat", verbose=False
        ).clamp(-1.0, 1.0)
        # Only the region is drawn; outside it the real slice, exactly.
        image = keep_context(image, condition, region)
        return torch.cat([image, condition[:, 1:]], dim=1)
