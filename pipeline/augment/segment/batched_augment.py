"""The classical augmentation of ``train.classical_augmentation``, batched in torch.

MONAI's dictionary pipeline (``RandFlipd`` -> ``Rand2DElasticd`` or ``RandAffined`` ->
``RandScaleIntensityd`` -> ``RandShiftIntensityd``) draws and resamples one sample at a time.
Here every flagged sample's parameters are drawn at once from a seeded ``torch.Generator`` and
the whole sub-batch is resampled with one ``grid_sample`` per interpolation mode (bilinear for
the image, nearest for the mask), on the batch's device.

The distributions are those MONAI 1.x draws with the arguments ``classical_augmentation``
passes (``monai/transforms/spatial/array.py``: ``RandAffineGrid``, ``RandDeformGrid``,
``Rand2DElastic``, ``Resample``; ``intensity/array.py``: ``RandScaleIntensity``,
``RandShiftIntensity``):

* flip of the columns with ``flip_prob``;
* with ``prob``, one resampling through a grid drawn as MONAI draws it:

  - rotation ``theta ~ U(-rotate_deg, rotate_deg)`` (in radians);
  - scale ``s_k = 1 + U(-|f_k|, |f_k|)`` per axis, ``f = (1/zoom_hi - 1, 1/zoom_lo - 1)``:
    MONAI reads the pair ``scale_range`` as one scalar range per spatial axis, so rows and
    columns are scaled independently (an anisotropic zoom, rows within ``1/zoom_hi`` and
    columns within ``1/zoom_lo`` of 1). Matched as MONAI does it, so both backends train the
    same augmentation;
  - elastic (``elastic`` on): control points every ``elastic_spacing_px`` pixels with two
    extra beyond each edge (``create_control_grid``), each displaced by ``N(0, 1) * m`` pixels
    per axis with one ``m ~ U(elastic_magnitude)`` per sample; the affine ``R @ S`` maps the
    displaced points; bicubic upsampling by the spacing (``align_corners=False``) and a centre
    crop give the dense grid (``Rand2DElastic.__call__``). Off: ``R @ S`` of the pixel grid
    (``RandAffine``);
  - the mask is resampled nearest with zero padding, the image bilinear with border padding
    (``grid_sample``, ``align_corners=False``, pixel coordinates scaled by ``2 / size``);
* image only: ``v * (1 + f)``, ``f ~ U(-intensity_scale, intensity_scale)``, with ``prob``;
  then ``v + o``, ``o ~ U(-intensity_shift, intensity_shift)``, with ``prob``.

Differences from MONAI: the random stream (one torch generator instead of a numpy
``RandomState`` per transform), so a seed gives other draws from the same distributions; the
bicubic upsampling of the control grid is applied as two small matrix products (the same
weights, :func:`upsampling_matrix`); the resampling runs in float32 where MONAI's ``Resample``
uses float64 (image differences ~1e-5 of the [-1, 1] range; a mask pixel whose source point
falls within ~1e-6 px of a nearest-neighbour boundary can round the other way); samples
without a geometric draw are not resampled at all (MONAI resamples them through the identity
grid, which returns them unchanged up to rounding). Given MONAI's drawn values the grid and
the resampled pair are MONAI's (tests/test_segment_augment.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.transforms.utils import create_control_grid, create_grid

from pipeline.params.segment import ClassicalAugmentParams


def grid_scale_range(zoom: tuple[float, float]) -> tuple[float, float]:
    """MONAI ``scale_range`` for a content zoom in ``zoom``: a grid scale of 1/z shows z.

    ``classical_augmentation`` passes this pair to MONAI, which reads it per spatial axis
    (rows, columns), each as ``U(-|f|, |f|)`` added to 1.
    """
    return (1.0 / zoom[1] - 1.0, 1.0 / zoom[0] - 1.0)


@dataclass(frozen=True)
class Draws:
    """Random parameters of ``n`` samples (float64 on the CPU; bool flags).

    ``angle`` (n,) radians; ``scale`` (n, 2) of rows and columns; ``offset`` (n, 2, gh, gw)
    control-point displacements in pixels, magnitude included (zeros without elastic).
    """

    flip: torch.Tensor
    warp: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    rescale: torch.Tensor
    factor: torch.Tensor
    shift: torch.Tensor
    offset_value: torch.Tensor


def control_shape(size: tuple[int, int], spacing: float) -> tuple[int, int]:
    """Control points ``(gh, gw)`` of MONAI's ``create_control_grid`` for an image ``size``."""
    grid = create_control_grid(size, (spacing, spacing), homogeneous=False, backend="torch")
    return tuple(int(k) for k in grid.shape[1:])


def draw(cfg: ClassicalAugmentParams, n: int, size: tuple[int, int], gen: torch.Generator) -> Draws:
    """Draw the parameters of ``n`` samples from ``gen`` (module docstring: MONAI's laws).

    Every parameter is drawn for every sample, fired or not, so the stream advances by the
    same amount for a given ``n`` whatever the outcomes.
    """

    def uniform(half: float, *shape: int) -> torch.Tensor:  # U(-half, half)
        return (2.0 * torch.rand(n, *shape, generator=gen, dtype=torch.float64) - 1.0) * half

    def fires(p: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) < p

    flip, warp = fires(cfg.flip_prob), fires(cfg.prob)
    angle = uniform(math.radians(cfg.rotate_deg))
    halves = torch.tensor([abs(f) for f in grid_scale_range(cfg.zoom)], dtype=torch.float64)
    scale = 1.0 + uniform(1.0, 2) * halves
    lo, hi = cfg.elastic_magnitude
    magnitude = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    gh, gw = control_shape(size, cfg.elastic_spacing_px)
    noise = torch.randn(n, 2, gh, gw, generator=gen, dtype=torch.float64)
    offset = magnitude[:, None, None, None] * noise if cfg.elastic else torch.zeros_like(noise)
    rescale, factor = fires(cfg.prob), uniform(cfg.intensity_scale)
    shift, offset_value = fires(cfg.prob), uniform(cfg.intensity_shift)
    return Draws(flip, warp, angle, scale, offset, rescale, factor, shift, offset_value)


@functools.lru_cache(maxsize=16)
def upsampling_matrix(n: int, spacing: float, crop: int) -> torch.Tensor:
    """``(crop, n)`` float64 matrix ``M``: ``M @ v`` is ``Rand2DElastic``'s upsampling of ``v``.

    MONAI upsamples the control grid with ``F.interpolate(mode="bicubic",
    scale_factor=spacing, align_corners=False, recompute_scale_factor=True)`` and centre-crops
    ``crop`` samples (``CenterSpatialCrop``: start ``out // 2 - crop // 2``). Bicubic
    interpolation is separable (per-axis weights, indices clamped per axis), so the 2D
    operation is ``M_rows @ G @ M_cols.T``; ``M`` is read off ``F.interpolate`` itself, applied
    to the unit vectors. Two small matrix products replace an upsampling to ``(n * spacing)^2``
    and a crop (26 ms -> well under 1 ms for 16 grids at 128 px on a CPU).
    """
    eye = torch.eye(n, dtype=torch.float64).reshape(1, n, n, 1)  # channel a: unit vector e_a
    out = int(math.floor(n * spacing))
    up = F.interpolate(eye, size=(out, 1), mode="bicubic", align_corners=False)[0, :, :, 0]
    start = out // 2 - crop // 2
    return up[:, start : start + crop].T.contiguous()  # (crop, n)


def sampling_grid(
    angle: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    size: tuple[int, int],
    spacing: float,
) -> torch.Tensor:
    """``grid_sample`` grid ``(n, H, W, 2)`` (x = column, y = row, in [-1, 1] units).

    ``angle`` (n,), ``scale`` (n, 2) rows/columns, ``offset`` (n, 2, gh, gw) pixel
    displacements of the control points (None: the affine alone, ``RandAffine``). The
    affine is MONAI's ``rotate @ scale`` acting on (row, column) pixel coordinates centred
    on the image.
    """
    h, w = size
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    affine = rot * scale[:, None, :]  # R @ diag(s): column k of R times s_k, (n, 2, 2)
    if offset is None:
        points = create_grid(size, homogeneous=False, backend="torch", dtype=angle.dtype)
        dense = torch.einsum("nij,jhw->nihw", affine, points)  # (n, 2, H, W)
    else:
        ctrl = create_control_grid(size, (spacing, spacing), homogeneous=False,
                                   backend="torch", dtype=angle.dtype)  # fmt: skip
        moved = torch.einsum("nij,njhw->nihw", affine, ctrl + offset)  # (n, 2, gh, gw)
        rows = upsampling_matrix(moved.shape[-2], spacing, h).to(moved)  # (H, gh)
        cols = upsampling_matrix(moved.shape[-1], spacing, w).to(moved)  # (W, gw)
        dense = rows @ moved @ cols.T  # (n, 2, H, W)
    return torch.stack([dense[:, 1] * (2.0 / max(2, w)), dense[:, 0] * (2.0 / max(2, h))], -1)


def apply(
    cfg: ClassicalAugmentParams, d: Draws, image: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return new ``(image, mask)`` ``(n, 1, H, W)`` float32 augmented with the draws ``d``.

    Pure: the inputs are not modified. Values are not clipped (``augment_batch`` clips).
    """
    dev = image.device
    flip = d.flip.to(dev)[:, None, None, None]
    image = torch.where(flip, image.flip(-1), image)
    mask = torch.where(flip, mask.flip(-1), mask)
    rows = torch.nonzero(d.warp).flatten()
    if len(rows):
        size = (image.shape[-2], image.shape[-1])
        f32 = torch.float32  # the grid in float32, as MONAI's AffineGrid computes it
        offset = d.offset[rows].to(f32) if cfg.elastic else None
        grid = sampling_grid(d.angle[rows].to(f32), d.scale[rows].to(f32), offset, size,
                             cfg.elastic_spacing_px).to(dev)  # fmt: skip
        at = rows.to(dev)
        image, mask = image.clone(), mask.clone()
        image[at] = F.grid_sample(image[at], grid, mode="bilinear", padding_mode="border",
                                  align_corners=False)  # fmt: skip
        mask[at] = F.grid_sample(mask[at], grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)  # fmt: skip
    gain = 1.0 + torch.where(d.rescale, d.factor, 0.0)
    bias = torch.where(d.shift, d.offset_value, 0.0)
    image = image * gain.to(dev, torch.float32)[:, None, None, None]
    image = image + bias.to(dev, torch.float32)[:, None, None, None]
    return image, mask


class BatchedClassical:
    """Seeded batched classical augmentation: call with ``(n, 1, H, W)`` image and mask.

    Keeps one ``torch.Generator`` seeded with ``seed`` (a run's draws depend on the seed and
    the sequence of sub-batch sizes only); returns new float32 tensors on the inputs' device.
    """

    def __init__(self, cfg: ClassicalAugmentParams, seed: int) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = draw(self.cfg, len(image), (image.shape[-2], image.shape[-1]), self.gen)
        return apply(self.cfg, d, image, mask)
