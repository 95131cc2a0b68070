"""Image grids for people to look at (sample PNGs, side-by-side figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.atomic import atomic_path


def tile(images: np.ndarray, nrow: int, pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images in [-1, 1] into one uint8 (rows*H, nrow*W) or (.., 3) array.

    One channel is shown as grey; two channels (CT image + mask) as grey with the mask in red,
    so a synthetic slice and its label are judged together.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {images.shape}")
    n, c, h, w = images.shape
    grey = (np.clip(images[:, 0], -1, 1) + 1) * 127.5  # (N, H, W)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (N, H, W, 3)
    if c >= 2:
        mask = images[:, 1] > 0
        rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
    rows = max(1, -(-n // nrow))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255.0)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = rgb[i]
    out = canvas.astype(np.uint8)
    return out if c >= 2 else out[..., 0]


def save_grid(images: np.ndarray, path: str | Path, nrow: int = 8, scale: int = 2) -> Path:
    """Write a PNG grid of ``images`` (N, C, H, W) in [-1, 1], upscaled ``scale`` times."""
    arr = tile(images, nrow)
    img = Image.fromarray(arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
