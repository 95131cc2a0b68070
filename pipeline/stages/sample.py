"""``gvae sample``: draw synthetic images from a trained run's checkpoint.

Writes ``samples.npz`` (``images`` float32 (N, C, H, W) in [-1, 1]) and ``grid.png``. Sampling
is seeded, so the same checkpoint and params give the same samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_section
from pipeline.io.atomic import atomic_dir


def draw(model, n: int, seed: int, batch_size: int = 256) -> np.ndarray:
    """Return ``n`` samples of ``model`` as float32 (n, C, H, W), reproducible for ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        chunks.append(model.sample(min(batch_size, n - start), generator=gen).float().cpu())
    return torch.cat(chunks).numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--run", required=True, type=Path, help="training run folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def run(params_path: Path, run_dir: Path, out_dir: Path) -> Path:
    """Sample ``evaluate.n_samples`` images from ``run_dir/checkpoint.pt`` into ``out_dir``."""
    from models.grid import save_grid
    from models.trainer import load_checkpoint

    params = load_section(params_path, "evaluate")
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint; run `gvae train` first")
    model = load_checkpoint(ckpt)
    images = draw(model, params.n_samples, params.seed)
    with atomic_dir(out_dir) as tmp:
        np.savez_compressed(tmp / "samples.npz", images=images)
        save_grid(images[:64], tmp / "grid.png", nrow=8)
    return out_dir


def main(args: argparse.Namespace) -> int:
    """CLI entry."""
    out = run(Path(args.params), args.run, args.out)
    print(f"samples written to {out}")
    return 0
