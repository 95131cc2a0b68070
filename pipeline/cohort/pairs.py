"""2D image/mask file pairs as a source of CT slices: find, pair, read, validate, slice.

Layout of a pairs folder (e.g. single Pancreas-CT slices exported as JPEG)::

    images/<case>-<slice>.jpg     CT slice, pixel value -> HU by ``HU = scale * value + offset``
    masks/<case>-<slice>.jpg      its pancreas mask (same name), pancreas where value > threshold

The name pattern (``PairsParams.pattern``) gives the case (patient) and the slice number. Each
pair is turned into the display orientation of ``pipeline.cohort.slicing`` (rows anterior ->
posterior,
columns patient right -> left) and then goes through the SAME cores as a volume: ROI centre,
``resample_crop`` (one anti-aliased interpolation), ``window_hu``. Every pair is kept: the
collection holds only slices with pancreas, so ``negative_fraction`` does not apply.

Every bad input raises ``ValueError`` naming the file(s). Apart from listing and reading files
nothing here touches the disk, and no function mutates its inputs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cohort.slicing import CaseSlices, crop_window, mask_offset_mm, shift_mm
from pipeline.params.cohort import PairsParams, SlicesParams

IMAGES_DIR = "images"
MASKS_DIR = "masks"
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# The middle half of the 8-bit range: a binary mask saved as JPEG has a few pixels here (ringing
# at the edges), a grey-scale picture stored as a mask has most of its pixels here.
GREY_BAND = (64, 191)
MAX_NAMED = 10  # file names quoted in one error message


@dataclass(frozen=True)
class Pair:
    """One image file and its mask file, with the case and slice number parsed from the name."""

    case_id: str
    slice_index: int
    image: Path
    mask: Path


def _names(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:MAX_NAMED])
    more = len(paths) - MAX_NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder not found (a pairs folder holds images/ and masks/)")
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    }


def find_pairs(folder: str | os.PathLike, pattern: str) -> dict[str, list[Pair]]:
    """Pair ``images/<name>`` with ``masks/<name>``; return ``{case_id: pairs by slice number}``.

    ``pattern`` (a regex with groups ``case`` and ``slice``) is matched against the name without
    its extension. Raises ``ValueError`` naming the file(s) for an image without a mask (or the
    reverse), a name that does not match, or two files with the same case and slice number.
    """
    folder = Path(folder)
    images, masks = _listing(folder / IMAGES_DIR), _listing(folder / MASKS_DIR)
    unpaired = [images[n] for n in images if n not in masks]
    unpaired += [masks[n] for n in masks if n not in images]
    if unpaired:
        raise ValueError(
            f"unpaired file(s), no file of the same name beside them: {_names(unpaired)}"
        )
    if not images:
        raise ValueError(f"{folder / IMAGES_DIR}: no image files ({', '.join(SUFFIXES)})")
    regex = re.compile(pattern)
    matches = {n: regex.match(Path(n).stem) for n in images}
    bad = [images[n] for n, m in matches.items() if m is None or not m["slice"].isdigit()]
    if bad:
        raise ValueError(
            f"file name(s) not matching slices.pairs.pattern {pattern!r} "
            f"(with a numeric slice): {_names(bad)}"
        )
    cases: dict[str, dict[int, Pair]] = {}
    for name, m in matches.items():
        pair = Pair(m["case"], int(m["slice"]), images[name], masks[name])
        seen = cases.setdefault(pair.case_id, {})
        if pair.slice_index in seen:
            other = seen[pair.slice_index].image
            raise ValueError(
                f"{pair.image} and {other}: same case {pair.case_id!r} and slice "
                f"number {pair.slice_index}"
            )
        seen[pair.slice_index] = pair
    return {c: [s[k] for k in sorted(s)] for c, s in sorted(cases.items())}


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image file as a ``(row, col)`` uint8 array; ``ValueError`` naming the file.

    Grey images stored as RGB (three equal channels, as JPEG exports often are) become one
    channel: Pillow's ITU-R 601 luma weights sum to exactly 1 in its fixed-point arithmetic, so
    for equal channels the result equals each channel.
    """
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated or corrupt file fails here, not later
            if im.mode not in ("1", "L", "RGB"):
                raise ValueError(f"{path}: unsupported image mode {im.mode} (need 8-bit L or RGB)")
            return np.asarray(im.convert("L"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: unreadable or corrupt image ({exc})") from None


def mask_from_values(
    values: np.ndarray, params: PairsParams, path: str | os.PathLike
) -> np.ndarray:
    """Threshold a stored mask (``value > mask_threshold``); reject one that is not binary.

    A mask with more than ``max_grey_fraction`` of its pixels in ``GREY_BAND`` is a grey-scale
    picture, not a label: ``ValueError`` naming ``path``. An empty mask is not an error.
    """
    values = np.asarray(values)
    grey = float(((values >= GREY_BAND[0]) & (values <= GREY_BAND[1])).mean())
    if grey > params.max_grey_fraction:
        raise ValueError(
            f"{path}: not a binary mask ({grey:.1%} of pixels are mid-grey "
            f"{GREY_BAND[0]}..{GREY_BAND[1]}; slices.pairs.max_grey_fraction is "
            f"{params.max_grey_fraction:g})"
        )
    return values > params.mask_threshold


def to_display_rows(arr: np.ndarray, params: PairsParams) -> np.ndarray:
    """Return ``arr`` (..., row, col) with rows anterior -> posterior (flipped if stored P -> A)."""
    if params.rows == "posterior_to_anterior":
        return np.ascontiguousarray(np.flip(arr, axis=-2))
    return np.asarray(arr)


def to_hu(values: np.ndarray, params: PairsParams) -> np.ndarray:
    """Stored pixel values -> float32 HU by ``scale * value + offset`` (a new array)."""
    scale, offset = params.intensity.scale, params.intensity.offset
    return (np.asarray(values, dtype=np.float32) * scale + offset).astype(np.float32)


def read_mask(pair: Pair, params: PairsParams) -> np.ndarray:
    """The mask of ``pair`` as bool ``(row, col)`` in display orientation."""
    return to_display_rows(mask_from_values(read_grey(pair.mask), params, pair.mask), params)


def read_pair(pair: Pair, params: PairsParams) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair -> ``(HU float32 (row, col), mask bool (row, col))``, display orientation.

    Raises ``ValueError`` naming the file for an unreadable image, a mask that is not binary,
    or image and mask of different shapes.
    """
    values = read_grey(pair.image)
    mask = read_mask(pair, params)
    if values.shape != mask.shape:
        raise ValueError(
            f"{pair.mask}: shape {mask.shape} differs from its image {pair.image} {values.shape}"
        )
    return to_display_rows(to_hu(values, params), params), mask


def _stack(arrays: list[np.ndarray], paths: list[Path], case_id: str) -> np.ndarray:
    shapes = [a.shape for a in arrays]
    common = max(set(shapes), key=shapes.count)
    odd = [p for p, s in zip(paths, shapes, strict=True) if s != common]
    if odd:
        raise ValueError(
            f"slices of case {case_id} differ in shape from its other slices {common}: "
            f"{_names(odd)} (one case is one scan with one matrix)"
        )
    return np.stack(arrays)


def read_case_masks(pairs: list[Pair], params: PairsParams) -> np.ndarray:
    """Masks of one case's pairs as bool ``(k, row, col)``, display orientation."""
    masks = [read_mask(p, params) for p in pairs]
    return _stack(masks, [p.mask for p in pairs], pairs[0].case_id)


def read_case(pairs: list[Pair], params: PairsParams) -> tuple[np.ndarray, np.ndarray]:
    """One case's pairs -> ``(HU float32 (k, row, col), mask bool (k, row, col))``."""
    read = [read_pair(p, params) for p in pairs]
    paths = [p.image for p in pairs]
    cid = pairs[0].case_id
    return _stack([r[0] for r in read], paths, cid), _stack([r[1] for r in read], paths, cid)


def image_centre(shape: tuple[int, ...]) -> tuple[float, float]:
    """Geometric centre ``(row, col)`` of the last two axes of ``shape``.

    It stands in for the body centre of a volume: the pairs' pixel values are clipped at 0 HU,
    so air and fat both read 0 and no HU threshold can find the body.
    """
    return (shape[-2] - 1) / 2.0, (shape[-1] - 1) / 2.0


def case_offset_mm(mask_d: np.ndarray, params: PairsParams) -> tuple[float, float] | None:
    """Pancreas centroid minus image centre in mm for one case's ``(k, row, col)`` masks."""
    return mask_offset_mm(mask_d, image_centre(mask_d.shape), (params.pixel_mm, params.pixel_mm))


def slice_pairs_case(
    hu_d: np.ndarray,
    mask_d: np.ndarray,
    slice_index: np.ndarray,
    params: SlicesParams,
    offset_mm: tuple[float, float] = (0.0, 0.0),
) -> CaseSlices:
    """Resample, crop and window one case's display slices ``(k, row, col)``; keep them all.

    The crop is centred on the image centre shifted by ``offset_mm`` (``mean_offset_mm`` of the
    training cases, or zero for ``centre: body``); pixels outside the image take the lowest HU a
    stored value can map to (what air reads in the files), so padding looks like the image's air.
    """
    p = params.pairs
    spacing = (p.pixel_mm, p.pixel_mm)
    centre = shift_mm(image_centre(hu_d.shape), offset_mm, spacing)
    fill = float(min(to_hu(np.array([0, 255]), p)))
    img, msk = crop_window(hu_d, mask_d.astype(np.float32), spacing, centre, params, fill)
    mask = msk.astype(np.uint8)[:, None]
    n_pos = int(mask.reshape(len(mask), -1).any(axis=1).sum())
    return CaseSlices(
        image=img[:, None],
        mask=mask,
        slice_index=np.asarray(slice_index, dtype=np.int64),
        positive=n_pos,
        negative=len(mask) - n_pos,
        n_slices=len(mask),
        spacing_mm=spacing,
    )
