"""Pure cores of the ``slices`` stage: HU window, display orientation, resample + crop, selection.

Axis convention of every 2D slice produced here (the radiological axial view a reader sees on a
viewing station, DICOM PS3.3 C.7.6.2.1.1 directions, IEC 61217 / ACR viewing convention):

* array ``[row, col]``;
* rows run anterior -> posterior (row 0 is the front of the body);
* columns run patient right -> left (column 0 is the patient's right, shown on the viewer's left).

Stacks of slices are ``(k, row, col)`` where ``k`` is the slice index of the source volume, kept
as it is so a slice can always be traced back to its volume.

ROI: every case is cropped around its own body centre plus one fixed offset in mm, the mean
pancreas-minus-body-centre offset of the training cases (``mask_offset_mm``, ``mean_offset_mm``).
The pancreas covers ~0.5% of a full-field slice; the fixed upper-abdomen crop gives the models
and the segmentation network the region that matters, and taking the offset from training
masks only keeps val/test labels out of the images.

Nothing here reads or writes files and no function mutates its inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from pipeline.params.cohort import SlicesParams

# Physical constants, not tuning knobs: air is -1000 HU by definition of the Hounsfield scale,
# and -500 HU sits halfway between air and water, so it separates body from surrounding air.
AIR_HU = -1000.0
BODY_HU = -500.0


def window_hu(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map Hounsfield units through the window ``level +- width / 2`` onto ``[-1, 1]``, clipped.

    ``level - width / 2`` maps to -1, ``level`` to 0 and ``level + width / 2`` to +1; values
    outside the window are clipped (the linear VOI LUT of DICOM PS3.3 C.11.2.1.2, rescaled to
    ``[-1, 1]``). Returns a new float32 array of the input's shape.
    """
    if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
        raise ValueError(
            f"window width must be a finite number > 0, got level={level}, width={width}"
        )
    # Imported here so that readers of the shards (training stages) do not pay for MONAI.
    from monai.transforms import ScaleIntensityRange
    from monai.utils import convert_to_numpy

    lo, hi = level - width / 2.0, level + width / 2.0
    # Cast first: int16 HU minus the window bound can overflow int16 (e.g. 32767 - (-160)).
    x = np.array(hu, dtype=np.float32, copy=True)
    scale = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)
    return convert_to_numpy(scale(x), dtype=np.float32)


def to_display(vol: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Reorder ``vol[i, j, k]`` with a RAS ``affine`` into display slices ``(k, row, col)``.

    Returns the stack (rows anterior -> posterior, columns patient right -> left, ``k`` unchanged)
    and its pixel spacing ``(row_mm, col_mm)``. The direction comes from the affine, not from an
    assumed storage order: TCIA Pancreas-CT stores rows posterior -> anterior (its
    ImageOrientationPatient column direction is ``(0, -1, 0)``), so reading ``vol[x, y]`` as
    ``[col, row]`` verbatim would show the patient upside down.
    """
    vol = np.asarray(vol)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    ornt = io_orientation(affine)
    if int(ornt[2, 0]) != 2:
        raise ValueError(
            "volume is not axial: its third voxel axis runs along world axis "
            f"{int(ornt[2, 0])} (RAS), expected the superior-inferior axis"
        )
    target = axcodes2ornt(("L", "P", "S"))
    # Keep the slice axis and its direction so that k stays the volume's own slice index.
    target[2] = ornt[2]
    disp = apply_orientation(vol, ornt_transform(ornt, target))  # (col R->L, row A->P, k)
    zooms = voxel_sizes(affine)
    col_mm = float(zooms[int(np.flatnonzero(ornt[:, 0] == 0)[0])])
    row_mm = float(zooms[int(np.flatnonzero(ornt[:, 0] == 1)[0])])
    return np.ascontiguousarray(disp.transpose(2, 1, 0)), (row_mm, col_mm)


def body_centre(hu_slices: np.ndarray) -> tuple[float, float]:
    """Return the in-plane centroid ``(row, col)`` of voxels above ``BODY_HU`` over all slices.

    One centre per volume rather than per slice keeps the anatomy at the same place in every
    slice of a case, and slices that miss the body (above the lungs) still get a sane centre.
    The label is deliberately not used: centring on it would leak its position into the images.
    Falls back to the geometric centre when no voxel is above the threshold.
    """
    hu_slices = np.asarray(hu_slices)
    body = hu_slices > BODY_HU  # (k, row, col) boolean
    total = int(body.sum())
    n_rows, n_cols = hu_slices.shape[1:]
    if total == 0:
        return (n_rows - 1) / 2.0, (n_cols - 1) / 2.0
    rows = body.sum(axis=(0, 2))
    cols = body.sum(axis=(0, 1))
    return float(rows @ np.arange(n_rows) / total), float(cols @ np.arange(n_cols) / total)


def mask_offset_mm(
    mask_d: np.ndarray, centre_rc: tuple[float, float], spacing_rc: tuple[float, float]
) -> tuple[float, float] | None:
    """Return ``(pancreas centroid - centre_rc)`` in mm along (rows, cols) of display slices.

    ``mask_d`` is ``(k, row, col)`` (rows anterior -> posterior); the centroid is over every mask
    pixel of every slice, so one case gives one offset. ``None`` when the mask is empty.
    """
    mask_d = np.asarray(mask_d) > 0
    if mask_d.ndim != 3:
        raise ValueError(f"expected (k, row, col) masks, got shape {mask_d.shape}")
    total = int(mask_d.sum())
    if total == 0:
        return None
    rows = mask_d.sum(axis=(0, 2)) @ np.arange(mask_d.shape[1]) / total
    cols = mask_d.sum(axis=(0, 1)) @ np.arange(mask_d.shape[2]) / total
    return (
        float((rows - centre_rc[0]) * spacing_rc[0]),
        float((cols - centre_rc[1]) * spacing_rc[1]),
    )


def mean_offset_mm(
    offsets: Mapping[str, tuple[float, float] | None],
) -> tuple[tuple[float, float], list[str]]:
    """Mean of the per-case offsets (``mask_offset_mm``), one vote per case; returns it and the ids.

    Pass the TRAINING cases only: the crop centre then carries no information from val/test
    labels (no leakage). Cases with an empty mask (``None``) do not vote. Raises ``ValueError``
    when no case has a mask pixel.
    """
    used = sorted(c for c, o in offsets.items() if o is not None)
    if not used:
        raise ValueError(
            f"no pancreas pixel in the masks of the {len(offsets)} training case(s); "
            "slices.centre: train_masks needs at least one"
        )
    mean = np.mean([offsets[c] for c in used], axis=0)
    return (float(mean[0]), float(mean[1])), used


def shift_mm(
    centre_rc: tuple[float, float], offset_mm: tuple[float, float], spacing_rc: tuple[float, float]
) -> tuple[float, float]:
    """Return ``centre_rc`` (pixels) moved by ``offset_mm`` (mm) on a grid of ``spacing_rc``."""
    return (
        centre_rc[0] + offset_mm[0] / spacing_rc[0],
        centre_rc[1] + offset_mm[1] / spacing_rc[1],
    )


def resample_crop(
    slices: np.ndarray,
    spacing_rc: tuple[float, float],
    centre_rc: tuple[float, float],
    pixel_mm: float,
    size: int,
    fill: float,
) -> np.ndarray:
    """Resample ``(k, row, col)`` slices to ``pixel_mm`` pixels on a ``size x size`` grid.

    The output grid is centred on ``centre_rc`` (input pixel coordinates); pixels outside the
    input take ``fill``. Returns float32 ``(k, size, size)``.

    Resampling and cropping are ONE linear interpolation (``scipy.ndimage.affine_transform``), so
    no value is interpolated twice. When downsampling (``pixel_mm`` > input spacing, the usual
    case: 0.66-0.98 mm in, several mm out) the slices are first low-pass filtered with a Gaussian
    of sigma ``(factor - 1) / 2`` input pixels, the anti-aliasing rule of
    ``skimage.transform.resize``; without it a 7x downsample would sample one input pixel in 49
    and turn noise and thin bright edges into aliasing.
    """
    x = np.asarray(slices, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected (k, row, col) slices, got shape {x.shape}")
    if pixel_mm <= 0 or min(spacing_rc) <= 0:
        raise ValueError(f"spacings must be > 0, got pixel_mm={pixel_mm}, input={spacing_rc}")
    factors = np.asarray([pixel_mm / spacing_rc[0], pixel_mm / spacing_rc[1]])
    sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
    half = (size - 1) / 2.0
    # Output pixel r sits at centre + (r - half) * pixel_mm in millimetres, i.e. at input
    # coordinate centre_row + (r - half) * factor_row; the same along columns.
    start = np.asarray(centre_rc, dtype=np.float64) - half * factors
    # Only the input under the output grid, widened by the filter radius and the interpolation
    # stencil, can reach the output: filtering just that window gives the same numbers (up to
    # float rounding) as filtering the whole slice; a 200 mm crop of a 410 mm slice filters a
    # third of the pixels.
    lo, hi = [0, 0], list(x.shape[1:])
    for ax in range(2):
        margin = int(4.0 * sigma[ax] + 0.5) + 2  # gaussian_filter's radius (truncate=4) + 2
        a = max(0, int(np.floor(start[ax])) - margin)
        b = min(x.shape[1 + ax], int(np.ceil(start[ax] + 2 * half * factors[ax])) + margin + 1)
        if a < b:  # else the grid misses the input entirely: keep it all, output is all fill
            lo[ax], hi[ax] = a, b
    x = x[:, lo[0] : hi[0], lo[1] : hi[1]]
    if np.any(sigma > 0):
        # gaussian_filter returns a new array; sigma 0 along k keeps slices independent.
        x = ndimage.gaussian_filter(x, sigma=(0.0, *sigma), mode="nearest")
    offset = (0.0, start[0] - lo[0], start[1] - lo[1])
    return ndimage.affine_transform(
        x,
        matrix=(1.0, factors[0], factors[1]),
        offset=offset,
        output_shape=(x.shape[0], size, size),
        order=1,
        mode="constant",
        cval=fill,
        prefilter=False,
    ).astype(np.float32, copy=False)


def case_seed(seed: int, case_id: str) -> list[int]:
    """Seed material for one case: the stage seed plus a stable hash of the case id.

    Deriving the stream from the id (not from the order cases are processed in) makes each case's
    choice independent of the manifest order and of which other cases exist.
    """
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def select_slices(mask: np.ndarray, negative_fraction: float, seed: list[int] | int) -> np.ndarray:
    """Return the sorted slice indices to keep from a ``(k, row, col)`` mask stack.

    Every slice with any mask pixel is kept, plus ``floor(negative_fraction * n_negative + 0.5)``
    of the slices without, chosen uniformly without replacement from ``seed``.
    """
    if not 0.0 <= negative_fraction <= 1.0:
        raise ValueError(f"negative_fraction must be in [0, 1], got {negative_fraction}")
    positive = np.asarray(mask).reshape(len(mask), -1).any(axis=1)
    pos_idx = np.flatnonzero(positive)
    neg_idx = np.flatnonzero(~positive)
    n_keep = int(np.floor(negative_fraction * len(neg_idx) + 0.5))
    chosen = np.random.default_rng(seed).choice(neg_idx, size=n_keep, replace=False)
    return np.sort(np.concatenate([pos_idx, chosen]).astype(np.int64))


@dataclass(frozen=True)
class CaseSlices:
    """The slices kept from one case; arrays share the first axis ``N``."""

    image: np.ndarray  # (N, 1, S, S) float32 in [-1, 1]
    mask: np.ndarray  # (N, 1, S, S) uint8 in {0, 1}
    slice_index: np.ndarray  # (N,) int64, k in the source volume
    positive: int  # kept slices with pancreas
    negative: int  # kept slices without
    n_slices: int  # slices in the source volume
    spacing_mm: tuple[float, float]  # source (row, col) pixel spacing


def crop_window(
    hu_d: np.ndarray,
    mask_d: np.ndarray,
    spacing_rc: tuple[float, float],
    centre_rc: tuple[float, float],
    params: SlicesParams,
    fill_hu: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample + crop display slices ``(k, row, col)`` and window them; the core of both sources.

    One interpolation to ``fov_mm / size`` mm pixels around ``centre_rc`` (``resample_crop``),
    padding with ``fill_hu``, then ``window_hu``. The mask is resampled with the image's filter
    and interpolation and thresholded at 0.5, so it outlines the same tissue the blurred image
    shows. Returns ``(image float32 (k, S, S) in [-1, 1], mask bool (k, S, S))``.
    """
    pixel_mm = params.fov_mm / params.size
    img = resample_crop(hu_d, spacing_rc, centre_rc, pixel_mm, params.size, fill=fill_hu)
    msk = resample_crop(mask_d, spacing_rc, centre_rc, pixel_mm, params.size, fill=0.0) >= 0.5
    return window_hu(img, params.window.level, params.window.width), msk


def slice_case(
    hu: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    params: SlicesParams,
    case_id: str,
    offset_mm: tuple[float, float] = (0.0, 0.0),
) -> CaseSlices:
    """Turn one HU volume and its label (same grid, ``vol[i, j, k]``, RAS affine) into slices.

    Orientation -> one resampling to ``fov_mm / size`` mm pixels around the body centre shifted
    by ``offset_mm`` (rows, cols; ``mean_offset_mm`` of the training cases, or zero for
    ``centre: body``), air padding -> HU window -> slice selection (``negative_fraction``).
    """
    hu = np.asarray(hu)
    label = np.asarray(label)
    if hu.shape != label.shape:
        raise ValueError(f"image shape {hu.shape} and label shape {label.shape} differ")
    hu_d, spacing = to_display(hu, affine)
    lab_d, _ = to_display((label > 0).astype(np.float32), affine)
    centre = shift_mm(body_centre(hu_d), offset_mm, spacing)
    img, msk = crop_window(hu_d, lab_d, spacing, centre, params, fill_hu=AIR_HU)
    keep = select_slices(msk, params.negative_fraction, case_seed(params.seed, case_id))
    image = img[keep][:, None]
    mask = msk[keep].astype(np.uint8)[:, None]
    n_pos = int(mask.reshape(len(keep), -1).any(axis=1).sum())
    return CaseSlices(
        image=image,
        mask=mask,
        slice_index=keep,
        positive=n_pos,
        negative=len(keep) - n_pos,
        n_slices=int(hu.shape[2]),
        spacing_mm=spacing,
    )


def case_offset_mm(
    hu: np.ndarray, label: np.ndarray, affine: np.ndarray
) -> tuple[float, float] | None:
    """The ``mask_offset_mm`` of one volume around its ``body_centre`` (display grid)."""
    hu_d, spacing = to_display(np.asarray(hu), affine)
    lab_d, _ = to_display(np.asarray(label) > 0, affine)
    return mask_offset_mm(lab_d, body_centre(hu_d), spacing)
