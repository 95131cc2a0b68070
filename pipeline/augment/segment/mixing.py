"""The mixing controls: CarveMix and CutMix between a run's own real training slices.

Both paste part of one training slice (the *source*) into another (the *target*) at the same
place and carry the labels along exactly: inside the pasted region image and mask are the
source's, outside it the target's. The slices of a run are crops centred on the pancreas, so
pasting in place keeps the organ where the anatomy has it (CarveMix was designed for registered
brain MRI, where the same holds).

* CarveMix (Zhang et al. 2021, MICCAI, "CarveMix: A Simple Data Augmentation Method for Brain
  Lesion Segmentation", eq. 1-3): the region is the source's lesion grown by a margin; the paper
  draws the margin from the lesion's signed distance map, here every pixel within ``margin``
  pixels (Euclidean) of the source's pancreas, ``margin`` drawn per sample.
* CutMix (Yun et al. 2019, ICCV, eq. 1 and the box sampling of section 3.1): a box of area
  share ``1 - lam``, ``lam ~ Beta(alpha, alpha)``, centred uniformly at random and clipped to the
  slice; for segmentation the per-pixel label is cut along instead of mixing class scores.

The ``Mixer`` applies one of them to a share of each batch's samples, before the classical
augmentation, so the composite is what gets deformed (its label stays aligned). Its sources are
the run's real training slices only: the fraction's own patients (``sources`` lists them for
the leakage guard).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.params.segment import MixingParams


def carve_region(mask: np.ndarray, margin: float) -> np.ndarray:
    """Bool array of ``mask``'s shape: pixels within ``margin`` px (Euclidean) of the mask.

    ``margin = 0`` is the mask itself; an empty mask gives an empty region. CarveMix's region
    (Zhang et al. 2021, eq. 2 with a non-negative distance threshold).
    """
    m = np.asarray(mask) > 0
    if not m.any():
        return np.zeros(m.shape, bool)
    # Distance of every pixel to the nearest pancreas pixel (0 inside), over the 2D plane only.
    dist = ndimage.distance_transform_edt(~m.reshape(-1, *m.shape[-2:])[0])
    return (dist <= margin).reshape(m.shape)


def paste(
    target_image: np.ndarray,
    target_mask: np.ndarray,
    source_image: np.ndarray,
    source_mask: np.ndarray,
    region: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return new ``(image, mask)``: the source's pixels and labels inside ``region``.

    Outside ``region`` both are the target's, exactly; the inputs are not modified.
    """
    image = np.where(region, source_image, target_image).astype(target_image.dtype)
    mask = np.where(region, source_mask, target_mask).astype(target_mask.dtype)
    return image, mask


def carvemix(
    target_image: np.ndarray,
    target_mask: np.ndarray,
    source_image: np.ndarray,
    source_mask: np.ndarray,
    margin: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CarveMix (Zhang et al. 2021): return ``(image, mask, region)`` of the composite.

    ``region`` is :func:`carve_region` of the source mask; inside it the composite is the
    source (image and label), outside it the target.
    """
    region = carve_region(source_mask, margin)
    return (*paste(target_image, target_mask, source_image, source_mask, region), region)


def cutmix_box(size: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)`` of CutMix's box (Yun et al. 2019, sec. 3.1) in a ``size`` px slice.

    Sides ``size * sqrt(1 - lam)``, centre uniform over the slice, clipped at its edges (so the
    pasted share can be smaller than ``1 - lam``, as in the paper's reference code).
    """
    side = size * np.sqrt(1.0 - lam)
    r, c = rng.integers(0, size, 2)
    half = int(side // 2)
    return (max(r - half, 0), min(r + half, size), max(c - half, 0), min(c + half, size))


def cutmix(
    target_image: np.ndarray,
    target_mask: np.ndarray,
    source_image: np.ndarray,
    source_mask: np.ndarray,
    box: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CutMix (Yun et al. 2019) for segmentation: return ``(image, mask, region)``.

    ``region`` is the ``box = (r0, r1, c0, c1)`` (rows ``r0:r1``, columns ``c0:c1`` of the last
    two axes); inside it image and label are the source's, outside the target's.
    """
    r0, r1, c0, c1 = box
    region = np.zeros(np.shape(target_mask), bool)
    region[..., r0:r1, c0:c1] = True
    return (*paste(target_image, target_mask, source_image, source_mask, region), region)


@dataclass
class Mixer:
    """Applies CarveMix or CutMix to a share of every batch, seeded, from a fixed source pool.

    ``image``/``mask`` are the run's training samples ``(N, 1, S, S)``; ``pool`` the indices
    into them a source may come from (CarveMix: the pancreas-bearing ones); ``sources`` the
    patients of the pool, for the leakage guard. Call with a batch's sample indices and arrays.
    """

    kind: str
    image: np.ndarray
    mask: np.ndarray
    pool: np.ndarray
    sources: list[str]
    params: MixingParams
    seed: int
    pasted: int = 0  # samples that got a paste, for the run record
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("carvemix", "cutmix"):
            raise ValueError(f"unknown mixing control '{self.kind}' (carvemix, cutmix)")
        # Its own stream: the batch order and the classical draws stay those of the
        # real+classical run with the same seed, so control and baseline are paired.
        self.rng = np.random.default_rng([self.seed, 1])

    def _source(self, target: int) -> int:
        pool = self.pool[self.pool != target] if len(self.pool) > 1 else self.pool
        return int(self.rng.choice(pool))

    def __call__(
        self, idx: np.ndarray, image: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of the batch ``(image, mask)`` with the pastes applied."""
        image, mask = image.copy(), mask.copy()
        if not len(self.pool):
            return image, mask
        p = self.params
        for i, target in enumerate(np.asarray(idx).tolist()):
            if self.rng.random() >= p.prob:
                continue
            j = self._source(target)
            if self.kind == "carvemix":
                margin = int(self.rng.integers(p.carve_margin_px[0], p.carve_margin_px[1] + 1))
                out = carvemix(image[i], mask[i], self.image[j], self.mask[j], margin)
            else:
                lam = float(self.rng.beta(p.cutmix_alpha, p.cutmix_alpha))
                box = cutmix_box(image.shape[-1], lam, self.rng)
                out = cutmix(image[i], mask[i], self.image[j], self.mask[j], box)
            image[i], mask[i] = out[0], out[1]
            self.pasted += 1
        return image, mask


def build_mixer(
    kind: str,
    image: np.ndarray,
    mask: np.ndarray,
    case_id: np.ndarray,
    params: MixingParams,
    seed: int,
) -> Mixer:
    """A ``Mixer`` over a run's real training slices (image, mask, patient of each).

    CarveMix draws its sources among the slices with pancreas (an empty mask carves nothing);
    CutMix among all. Returns the mixer; its ``sources`` are the pool's patients.
    """
    if kind == "carvemix":
        pool = np.flatnonzero(np.asarray(mask).reshape(len(mask), -1).any(1))
    else:
        pool = np.arange(len(image))
    sources = sorted({str(c) for c in np.asarray(case_id)[pool].tolist()})
    return Mixer(kind, image, mask, pool, sources, params, seed)
