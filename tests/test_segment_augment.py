"""The batched classical augmentation against MONAI's per-sample pipeline.

Exact checks where both can be fed the same parameters (MONAI's drawn values read back from its
transforms), statistical ones where only the laws can agree: two-sample Kolmogorov-Smirnov
tests over many seeded draws, each at a bound a wrong law fails (a negative control shows it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import set_track_meta
from monai.transforms import Affine
from scipy.stats import ks_2samp

from pipeline.augment.segment.batched_augment import BatchedClassical, draw, sampling_grid
from pipeline.augment.segment.train import augment_batch, classical_augmentation
from pipeline.params.segment import ClassicalAugmentParams

P_MIN = 1e-3  # a KS p-value below this fails: the two samples differ in law


def disk_pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, S, S)`` image (a ramp plus noise in [-1, 1]) and an off-centre disk mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = 0.8 * (xx / size - 0.5) + rng.uniform(-0.2, 0.2, (size, size))
    mask = ((yy - 0.3 * size) ** 2 + (xx - 0.65 * size) ** 2) < (0.18 * size) ** 2
    return (torch.tensor(image, dtype=torch.float32)[None],
            torch.tensor(mask, dtype=torch.float32)[None])  # fmt: skip


def warp_with(grid: torch.Tensor, image: torch.Tensor, mask: torch.Tensor):
    """Resample one ``(1, S, S)`` pair through a ``(1, S, S, 2)`` grid as the backends do."""
    img = F.grid_sample(image[None], grid.float(), "bilinear", "border", align_corners=False)
    msk = F.grid_sample(mask[None], grid.float(), "nearest", "zeros", align_corners=False)
    return img[0], msk[0]


@pytest.mark.parametrize("size", [32, 45])
def test_elastic_grid_is_monais_for_the_same_draws(size):
    """Rand2DElasticd's drawn rotation, scales and control-point offsets, fed to the batched
    grid, give MONAI's image (float32 against float64 resampling) and exactly its mask; the
    upsampling matrices reproduce MONAI's bicubic upsampling and centre crop."""
    set_track_meta(False)
    cfg = ClassicalAugmentParams(prob=1.0, flip_prob=0.0, elastic_magnitude=(2.0, 4.0))
    warp = classical_augmentation(cfg, 1).transforms[1]
    image, mask = disk_pair(size)
    for _ in range(3):
        out = warp({"image": image, "mask": mask})
        g = warp.rand_2d_elastic
        offset = torch.as_tensor(g.deform_grid.rand_mag * g.deform_grid.random_offset)[None]
        grid = sampling_grid(  # float32, as the backend computes it
            torch.tensor(g.rand_affine_grid.rotate_params, dtype=torch.float32),
            torch.tensor([g.rand_affine_grid.scale_params], dtype=torch.float32),
            offset.float(), (size, size), cfg.elastic_spacing_px,
        )  # fmt: skip
        img, msk = warp_with(grid, image, mask)
        assert float((img - torch.as_tensor(out["image"])).abs().max()) < 1e-4
        assert torch.equal(msk, torch.as_tensor(out["mask"]))


def test_affine_grid_is_monais_without_elastic():
    """With ``elastic`` off the grid is MONAI's ``Affine`` (rotate @ scale) of the pixel grid."""
    image, mask = disk_pair(32)
    angle, scale = 0.2, (1.07, 0.93)
    f32 = {"dtype": torch.float32}
    grid = sampling_grid(torch.tensor([angle], **f32), torch.tensor([scale], **f32), None,
                         (32, 32), 16.0)  # fmt: skip
    img, msk = warp_with(grid, image, mask)
    ref_img = Affine(rotate_params=angle, scale_params=scale, mode="bilinear",
                     padding_mode="border", image_only=True)(image)  # fmt: skip
    ref_msk = Affine(rotate_params=angle, scale_params=scale, mode="nearest",
                     padding_mode="zeros", image_only=True)(mask)  # fmt: skip
    assert float((img - ref_img).abs().max()) < 1e-4
    assert torch.equal(msk, ref_msk)


def monai_draws(cfg: ClassicalAugmentParams, n: int, size: int = 16) -> dict[str, np.ndarray]:
    """Run MONAI's pipeline ``n`` times and read back what each transform drew."""
    set_track_meta(False)
    pipe = classical_augmentation(cfg, 7)
    flip, warp, scaler, shifter = pipe.transforms
    image, mask = disk_pair(size)
    out: dict[str, list] = {k: [] for k in ("flip", "warp", "rescale", "shift", "angle",
                                             "scale_row", "scale_col", "magnitude", "factor",
                                             "offset")}  # fmt: skip
    for _ in range(n):
        pipe({"image": image, "mask": mask})
        for key, t in (("flip", flip), ("warp", warp), ("rescale", scaler), ("shift", shifter)):
            out[key].append(t._do_transform)
        if warp._do_transform:
            g = warp.rand_2d_elastic
            out["angle"].append(g.rand_affine_grid.rotate_params[0])
            out["scale_row"].append(g.rand_affine_grid.scale_params[0])
            out["scale_col"].append(g.rand_affine_grid.scale_params[1])
            out["magnitude"].append(g.deform_grid.rand_mag)
        if scaler._do_transform:
            out["factor"].append(scaler.scaler.factor)
        if shifter._do_transform:
            out["offset"].append(shifter.shifter._offset)
    return {k: np.asarray(v, float) for k, v in out.items()}


def batched_draws(cfg: ClassicalAugmentParams, n: int, size: int = 16) -> dict[str, np.ndarray]:
    """The same quantities from the batched backend's ``draw`` (only where each fired)."""
    d = draw(cfg, n, (size, size), torch.Generator().manual_seed(7))
    w, r, s = d.warp, d.rescale, d.shift
    # Magnitude: the per-sample factor of the N(0, 1) control-point noise, as MONAI's rand_mag.
    mag = d.offset.flatten(1).norm(dim=1) / d.offset[0].numel() ** 0.5
    return {
        "flip": d.flip.numpy(), "warp": w.numpy(), "rescale": r.numpy(), "shift": s.numpy(),
        "angle": d.angle[w].numpy(), "scale_row": d.scale[w, 0].numpy(),
        "scale_col": d.scale[w, 1].numpy(), "magnitude": mag[w].numpy(),
        "factor": d.factor[r].numpy(), "offset": d.offset_value[s].numpy(),
    }  # fmt: skip


CONTINUOUS = ("angle", "scale_row", "scale_col", "factor", "offset")


def test_drawn_parameters_follow_monais_laws():
    """Firing rates within 4 binomial SDs; every continuous parameter KS-indistinguishable;
    the anisotropic zoom included (rows within 1/1.1, columns within 1/0.9 of 1)."""
    cfg = ClassicalAugmentParams()
    n = 1500
    ref, ours = monai_draws(cfg, n), batched_draws(cfg, 4 * n)
    for key, p in (("flip", cfg.flip_prob), ("warp", cfg.prob), ("rescale", cfg.prob),
                   ("shift", cfg.prob)):  # fmt: skip
        for sample in (ref[key], ours[key]):
            assert abs(sample.mean() - p) < 4 * np.sqrt(p * (1 - p) / len(sample)), key
    for key in CONTINUOUS:
        assert ks_2samp(ref[key], ours[key]).pvalue > P_MIN, key
    for sample in (ref, ours):  # rows and columns drawn independently, as MONAI does
        r = np.corrcoef(sample["scale_row"], sample["scale_col"])[0, 1]
        assert abs(r) < 4 / np.sqrt(len(sample["scale_row"]))
    # Magnitude: the norm of a finite noise grid only estimates it; its range must agree.
    assert ref["magnitude"].max() <= cfg.elastic_magnitude[1]
    assert abs(np.median(ours["magnitude"]) - np.median(ref["magnitude"])) < 0.1


def test_the_ks_bound_catches_a_wrong_law():
    """Negative control: a 20% wider rotation, or rows scaled like columns, fails the test."""
    cfg = ClassicalAugmentParams()
    ref = monai_draws(cfg, 1500)
    wider = batched_draws(cfg.model_copy(update={"rotate_deg": 1.2 * cfg.rotate_deg}), 6000)
    assert ks_2samp(ref["angle"], wider["angle"]).pvalue < P_MIN
    assert ks_2samp(ref["scale_row"], ref["scale_col"]).pvalue < P_MIN


def effects(backend: str, cfg: ClassicalAugmentParams, n: int) -> dict[str, np.ndarray]:
    """Mask area ratio, mask centroid shift (rows, columns) and image mean of ``n`` draws."""
    image, mask = disk_pair(32)
    img = image[None].repeat(n, 1, 1, 1).numpy()
    msk = mask[None].repeat(n, 1, 1, 1).numpy()
    out_img, out_msk = augment_batch(classical_augmentation(cfg, 11, backend), img, msk,
                                     np.ones(n, bool))  # fmt: skip
    area = out_msk.sum((1, 2, 3))
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    keep = area > 0
    cy = (out_msk[:, 0] * yy).sum((1, 2))[keep] / area[keep]
    cx = (out_msk[:, 0] * xx).sum((1, 2))[keep] / area[keep]
    y0, x0 = float((mask[0] * yy).sum() / mask.sum()), float((mask[0] * xx).sum() / mask.sum())
    return {"area": (area / mask.sum()).numpy(), "dy": (cy - y0).numpy(),
            "dx": (cx - x0).numpy(), "mean": out_img.mean((1, 2, 3)).numpy()}  # fmt: skip


def test_augmented_masks_and_images_agree_in_law_with_monai():
    """Over 800 samples each: area ratio, centroid shift and image mean KS-indistinguishable.

    Negative control: a geometric draw firing at 0.65 instead of 0.5 is caught by the area
    ratio (p ~ 4e-6). These image-level statistics are the blunter check (a zoom range 2.5x
    as wide is needed to fail them); the parameter laws above are the sharp one.
    """
    cfg = ClassicalAugmentParams()
    ref, ours = effects("monai", cfg, 800), effects("batched", cfg, 800)
    for key in ref:
        assert ks_2samp(ref[key], ours[key]).pvalue > P_MIN, key
    often = effects("batched", cfg.model_copy(update={"prob": 0.65}), 800)
    assert ks_2samp(ref["area"], often["area"]).pvalue < P_MIN


def test_batched_is_identity_when_nothing_fires():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (5, 1, 24, 24)).astype(np.float32)
    mask = (rng.uniform(size=(5, 1, 24, 24)) > 0.7).astype(np.uint8)
    cfg = ClassicalAugmentParams(prob=0.0, flip_prob=0.0)
    img, msk = augment_batch(BatchedClassical(cfg, 0), image, mask, np.ones(5, bool))
    np.testing.assert_array_equal(img.numpy(), image)
    np.testing.assert_array_equal(msk.numpy(), mask)


@pytest.mark.parametrize("elastic", [True, False])
def test_batched_keeps_masks_binary_shapes_and_is_seeded(elastic):
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (6, 1, 20, 20)).astype(np.float32)
    mask = (rng.uniform(size=(6, 1, 20, 20)) > 0.6).astype(np.uint8)
    before = image.copy(), mask.copy()
    cfg = ClassicalAugmentParams(prob=1.0, elastic=elastic, intensity_scale=0.5)
    flags = np.array([1, 1, 0, 1, 0, 1], bool)
    a = augment_batch(BatchedClassical(cfg, 3), image, mask, flags)
    b = augment_batch(BatchedClassical(cfg, 3), image, mask, flags)
    c = augment_batch(BatchedClassical(cfg, 4), image, mask, flags)
    assert a[0].shape == a[1].shape == image.shape and a[0].dtype == torch.float32
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert float(a[0].min()) >= -1 and float(a[0].max()) <= 1
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seed, same draws
    assert not torch.equal(a[0], c[0])
    np.testing.assert_array_equal(a[0][~flags].numpy(), image[~flags])  # unflagged: untouched
    assert not np.array_equal(a[0][flags].numpy(), image[flags])
    np.testing.assert_array_equal(image, before[0])  # inputs untouched
    np.testing.assert_array_equal(mask, before[1])
