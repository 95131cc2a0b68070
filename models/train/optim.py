"""The trainer's optimizers, chosen by ``TrainConfig.optimizer`` (one mechanism for every model)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.nn import Parameter


def make_optimizer(
    kind: str, params: Iterable[Parameter], lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """Return ``torch.optim.Adam(params, lr, betas)`` or ``torch.optim.RMSprop(params, lr)``.

    RMSProp is WGAN's choice (Arjovsky et al. 2017, Algorithm 1 and section 3: momentum-based
    optimizers such as Adam destabilised critic training with weight clipping); it runs with
    PyTorch's defaults (alpha 0.99, no momentum) and ignores ``betas``.
    """
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {kind!r}; valid: adam, rmsprop")
