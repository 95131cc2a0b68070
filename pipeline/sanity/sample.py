"""``gvae sample``: draw synthetic images from a trained run's checkpoint.

Writes ``samples.npz`` (``images`` float32 (N, C, H, W) in [-1, 1]) and ``grid.png``. Sampling
is seeded, so the same checkpoint and params give the same samples.

With ``evaluate.traversal.enabled`` it also writes the latent traversal grid of models with an
encoder (Higgins et al. 2017; Chen et al. 2018; see ``models/eval/traversal.py``): ``traversal.png``
(rows = the latent dimensions with the largest KL on test images, columns = values) and
``traversal.json`` (which dimension each row is, its KL, the values, the anchor). Models
without an encoder, or a call without ``--dataset``/``--data`` to rank dimensions on, get a
``traversal.json`` whose ``skipped`` says why, and no grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from common.atomic import atomic_dir
from pipeline.params.loader import load_section


def draw(model, n: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """Return ``n`` samples of ``model`` as float32 (n, C, H, W), reproducible for ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        chunks.append(model.sample(min(batch_size, n - start), generator=gen).float().cpu())
    return torch.cat(chunks).numpy()


def traversal_grid(model, test: torch.Tensor, cfg, seed: int, batch_size: int = 256):
    """Return (images (dims * steps, C, H, W) float32, info dict) of one traversal grid.

    ``test`` (N, C, H, W): real test images; the per-dimension KL is averaged over
    ``cfg.kl_images`` of them drawn with ``seed``, and the anchor is test image
    ``cfg.anchor_image`` (``cfg`` is ``evaluate.traversal``). ``info`` is JSON-ready.
    """
    from models.eval.traversal import kl_per_dim, top_dims, traversal

    if cfg.anchor == "test_image" and cfg.anchor_image >= len(test):
        raise ValueError(
            f"evaluate.traversal.anchor_image {cfg.anchor_image} is beyond the "
            f"{len(test)} test images"
        )
    gen = torch.Generator().manual_seed(seed)
    subset = test[torch.randperm(len(test), generator=gen)[: cfg.kl_images]]
    kl = kl_per_dim(model, subset, batch_size=batch_size)  # (latent,)
    dims = top_dims(kl, cfg.dims)
    if cfg.anchor == "test_image":
        from models.base import eval_mode

        with torch.no_grad(), eval_mode(model):
            z0 = model.encode(test[cfg.anchor_image : cfg.anchor_image + 1])[0][0].float()
    else:
        z0 = torch.zeros(model.latent_dim)
    values = torch.linspace(cfg.range[0], cfg.range[1], cfg.steps)
    images = traversal(model, z0, dims, values, batch_size=batch_size).numpy()
    info = {
        "dims": dims,
        "kl_nats": [round(float(kl[d]), 4) for d in dims],
        "values": [round(float(v), 4) for v in values],
        "anchor": cfg.anchor,
        "anchor_image": cfg.anchor_image if cfg.anchor == "test_image" else None,
        "kl_images": len(subset),
        "latent_dim": int(model.latent_dim),
    }
    return images, info


def run(
    params_path: Path,
    run_dir: Path,
    out_dir: Path,
    dataset: str | None = None,
    data_dir: Path | None = None,
) -> Path:
    """Sample ``evaluate.n_samples`` images from ``run_dir/checkpoint.pt`` into ``out_dir``.

    Also the traversal grid when ``evaluate.traversal.enabled`` (module docstring).
    """
    from models.eval.grid import save_grid
    from models.train.checkpoint import load_checkpoint

    params = load_section(params_path, "evaluate")
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint; run `gvae train` first")
    if (dataset is None) != (data_dir is None):
        raise ValueError("--dataset and --data go together (the test images of the traversal)")
    model = load_checkpoint(ckpt)
    images = draw(model, params.n_samples, params.seed)
    cfg = params.traversal
    grid, info = None, None
    if cfg.enabled and not model.has_encoder:
        info = {"skipped": f"{model.name} has no encoder: no posterior to traverse"}
    elif cfg.enabled and data_dir is None:
        info = {"skipped": "no --dataset/--data given to rank latent dimensions by test KL"}
    elif cfg.enabled:
        from pipeline.sanity.datasets import load_images

        test = load_images(dataset, data_dir, "test")[0]
        grid, info = traversal_grid(model, test, cfg, params.seed, params.batch_size)
    with atomic_dir(out_dir) as tmp:
        np.savez_compressed(tmp / "samples.npz", images=images)
        save_grid(images[:64], tmp / "grid.png", nrow=8)
        if grid is not None:
            save_grid(grid, tmp / "traversal.png", nrow=cfg.steps)
        if info is not None:
            (tmp / "traversal.json").write_text(json.dumps(info, indent=2) + "\n")
    if info is not None and "skipped" in info:
        print(f"traversal skipped: {info['skipped']}")
    return out_dir
