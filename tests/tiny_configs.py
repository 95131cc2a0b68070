"""Tiny model configs for CPU tests of the whole registry.

Models configured by ``NetConfig`` share one tiny dict (each test file picks its own); a model
whose config has no ``latent_dim`` field (the diffusion model: its latent is the initial noise)
gets ``DIFFUSION_TINY``: two UNet levels of 8 channels, 8 training timesteps, 3 DDIM steps
(3 ``sample_steps`` for the model whose sampler is a setting, the conditional one); the
SPADE GAN (MONAI's SPADENet, not a ``NetConfig``) gets ``SPADE_TINY``: two 8/16-channel levels
and two one-layer PatchGANs, 16 px and up.
"""

from __future__ import annotations

from typing import Any

from models.config import NetConfig
from models.registry import lookup

DIFFUSION_TINY = {
    "channels": [8, 8],
    "attention_levels": [False, False],
    "norm_num_groups": 4,
    "num_head_channels": 4,
    "num_train_timesteps": 8,
    "ddim_steps": 3,
}

SPADE_TINY = {
    "latent_dim": 8,
    "num_channels": [8, 16],
    "spade_hidden": 8,
    "disc_channels": 8,
    "disc_layers": 1,
}


def tiny_config(name: str, net_tiny: dict[str, Any], **over: Any) -> dict[str, Any]:
    """``net_tiny`` (or the family's own tiny dict, see the module docstring) with ``over``."""
    _, config_cls = lookup(name)
    fields = config_cls.model_fields
    if issubclass(config_cls, NetConfig):
        base = net_tiny
    elif "num_channels" in fields:
        base = SPADE_TINY
    else:
        base = {k: v for k, v in DIFFUSION_TINY.items() if k in fields}
        if "sample_steps" in fields:
            base["sample_steps"] = DIFFUSION_TINY["ddim_steps"]
    return {**base, **over}
