"""Sample snapshots of a training run: the same seeded draw at every ``sample_every`` step.

``gvae evaluate`` follows the in-domain classifier's class entropy over these snapshots to flag
mode collapse; conditional models draw them for fixed training masks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.atomic import atomic_path
from models.base import GenerativeModel
from models.config import TrainConfig


def fixed_condition(model: GenerativeModel, data: torch.Tensor, n: int) -> torch.Tensor | None:
    """The first ``n`` training pairs (cycled when there are fewer) for a conditional model's
    grids and snapshots: the same masks at every step, so they differ only by the weights.
    ``None`` for an unconditional model."""
    if not model.conditional:
        return None
    return data[torch.arange(n, device=data.device) % data.shape[0]]


def save_snapshot(
    model: GenerativeModel, cfg: TrainConfig, dest: Path, amp, data: torch.Tensor | None = None
) -> Path:
    """Write ``cfg.snapshot_samples`` samples of ``model`` to ``dest`` (float16 npz ``images``).

    The same seeded draw at every snapshot (``model.sample`` with generator seed
    ``cfg.seed + 1``, independent of the training RNG), so the snapshots of a run differ only
    by the weights; ``model.sample`` runs in eval mode and restores the training mode. A
    conditional model draws for the masks of ``fixed_condition(model, data, ...)``.
    """
    import numpy as np

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    chunks, left = [], cfg.snapshot_samples
    condition = fixed_condition(model, data, cfg.snapshot_samples) if data is not None else None
    with torch.no_grad(), amp():
        while left:
            n = min(left, 256)
            done = cfg.snapshot_samples - left
            cond = None if condition is None else condition[done : done + n]
            chunks.append(model.sample(n, generator=gen, condition=cond).float().cpu())
            left -= n
    images = torch.cat(chunks).numpy().astype(np.float16)
    with atomic_path(dest) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, images=images)
    return dest
