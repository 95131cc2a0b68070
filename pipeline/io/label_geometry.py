"""Place a label volume on a CT grid by physical geometry, never by array index.

Both grids are a shape plus a 4x4 voxel-to-world affine in NIfTI's RAS+ mm convention
(NIfTI-1 qform/sform, ``world = A @ [i, j, k, 1]``), as nibabel's ``img.affine`` and
``read_series`` give them. A label voxel maps to CT voxel coordinates through
``T = inv(A_ct) @ A_label``; three outcomes:

- exact: T's 3x3 part is a signed permutation and its translation an integer offset, both to
  within ``grid_tolerance_mm`` at every corner of the label grid. The label is then the CT's own
  lattice, reoriented (RAS, LPS, ...), with axes permuted, or cropped, and it is copied by
  transpose, flip and paste, bit for bit. Nearest-neighbour resampling would pick the same voxels
  (the deviation is far below half a voxel); the copy has no rounding ties and is cheaper.
- nearest: any other grid (2 mm slices, another pixel size, an oblique lattice) is resampled:
  every CT voxel takes the label value at the nearest label voxel. Labels are categories, so
  they are never interpolated. ``scipy.ndimage.affine_transform`` (order 0) applies ``inv(T)``
  as it stands, so any affine works; SimpleITK's Resample (``sitkNearestNeighbor``) gives the
  same voxels on orthonormal grids, but on a sheared sform (which NIfTI allows) 40 of 496 label
  voxels differed, and it needs both grids rebuilt as LPS images first. The tests check this
  resample against SimpleITK on a rotated grid and against its definition on a sheared one.
- rejected: a label grid whose voxel centres reach beyond the CT's outermost voxel centres by
  more than half a CT voxel plus ``outside_tolerance_mm``. Labels are drawn on the CT or a crop
  of it, so a grid sticking out means the label and the CT do not belong together.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
from scipy import ndimage

AXES = ("i", "j", "k")


def _check_grid(name: str, shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Return ``affine`` as float64 after checking that it and ``shape`` describe a 3D grid."""
    affine = np.asarray(affine, dtype=np.float64)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} shape {tuple(shape)} is not a 3D grid")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{name} affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(
            f"{name} affine is singular (a voxel size of 0?): {affine[:3, :3].tolist()}"
        )
    return affine


def voxel_transform(label_affine: np.ndarray, ct_affine: np.ndarray) -> np.ndarray:
    """Return the 4x4 map from label voxel indices to CT voxel indices, ``inv(A_ct) @ A_label``."""
    return np.linalg.solve(ct_affine, label_affine)


def _corners(shape: Sequence[int]) -> np.ndarray:
    """(8, 3) indices of the outermost voxel centres of a grid of ``shape``."""
    return np.array(list(product(*[(0, n - 1) for n in shape])), dtype=np.float64)


def outside_mm(
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    ct_shape: Sequence[int],
    ct_affine: np.ndarray,
) -> np.ndarray:
    """Return, per CT axis (i, j, k), how far in mm the label's voxel centres reach beyond the CT's
    outermost voxel centres (0 where the label grid stays inside)."""
    transform = voxel_transform(label_affine, ct_affine)
    at = _corners(label_shape) @ transform[:3, :3].T + transform[:3, 3]  # (8, 3) CT indices
    below = np.maximum(-at.min(axis=0), 0.0)
    above = np.maximum(at.max(axis=0) - (np.asarray(ct_shape) - 1), 0.0)
    return np.maximum(below, above) * np.linalg.norm(ct_affine[:3, :3], axis=0)


def exact_mapping(
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    ct_affine: np.ndarray,
    grid_tolerance_mm: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return ``(signed permutation (3, 3), integer offset (3,))`` with ``ct = P @ label + o``, or
    ``None`` when the label grid is not the CT lattice to within ``grid_tolerance_mm``."""
    transform = voxel_transform(label_affine, ct_affine)
    linear, shift = transform[:3, :3], transform[:3, 3]
    perm, offset = np.rint(linear), np.rint(shift)
    magnitude = np.abs(perm)
    is_signed_perm = (
        set(np.unique(magnitude).tolist()) <= {0.0, 1.0}
        and np.all(magnitude.sum(axis=0) == 1)
        and np.all(magnitude.sum(axis=1) == 1)
    )
    if not is_signed_perm:
        return None
    # An affine map errs most at a corner of the grid; measure that error in CT millimetres.
    corners = _corners(label_shape)
    error_vox = corners @ (linear - perm).T + (shift - offset)
    error_mm = np.linalg.norm(error_vox @ ct_affine[:3, :3].T, axis=1)
    if float(error_mm.max()) > grid_tolerance_mm:
        return None
    return perm.astype(np.int64), offset.astype(np.int64)


def copy_exact(
    label: np.ndarray, perm: np.ndarray, offset: np.ndarray, ct_shape: Sequence[int]
) -> np.ndarray:
    """Return a new uint8 CT-shaped array holding ``label`` moved by ``ct = perm @ idx + offset``;
    label voxels that land outside the CT grid are dropped, CT voxels it does not cover are 0."""
    src = np.abs(perm).argmax(axis=1)  # CT axis a takes label axis src[a]
    sign = perm[np.arange(3), src]
    moved = np.asarray(label).transpose(src)
    moved = moved[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in sign)]
    # A flipped axis starts where the label's last voxel lands.
    start = np.where(sign > 0, offset, offset - (np.asarray(moved.shape) - 1))
    # Fortran order, as NIfTI stores voxels and read_series returns HU: pasting a Fortran label
    # into a C array would cost a strided copy of every voxel (~1 s for 512x512x240).
    out = np.zeros(tuple(int(n) for n in ct_shape), dtype=np.uint8, order="F")
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(moved.shape), out.shape)
    if np.any(hi <= lo):
        return out
    dst = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    srcs = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start, strict=True))
    out[dst] = moved[srcs]
    return out


def resample_nearest(
    label: np.ndarray, label_affine: np.ndarray, ct_shape: Sequence[int], ct_affine: np.ndarray
) -> np.ndarray:
    """Return a new uint8 CT-shaped array (Fortran order): each CT voxel takes the value of the
    label voxel nearest to it in physical space, 0 where it lies outside the label's voxels."""
    to_label = np.linalg.inv(voxel_transform(label_affine, ct_affine))  # CT index -> label index
    out = np.zeros(tuple(int(n) for n in ct_shape), dtype=np.uint8, order="F")
    # "grid-constant": a label voxel covers +/- half a voxel, as in ITK; scipy's "constant" would
    # drop the outer half of every edge voxel.
    ndimage.affine_transform(
        np.asarray(label, dtype=np.uint8),
        to_label[:3, :3],
        offset=to_label[:3, 3],
        output=out,
        order=0,
        mode="grid-constant",
        cval=0,
    )
    return out


def place_label(
    label: np.ndarray,
    label_affine: np.ndarray,
    ct_shape: Sequence[int],
    ct_affine: np.ndarray,
    grid_tolerance_mm: float,
    outside_tolerance_mm: float,
) -> tuple[np.ndarray, str]:
    """Map ``label`` onto the CT grid by its affine; return ``(uint8 array of ct_shape, method)``
    with method "exact" or "nearest" (see the module docstring). The input is never modified.

    Raises ``ValueError`` naming the distance in mm when the label grid reaches outside the CT by
    more than half a CT voxel plus ``outside_tolerance_mm``, or when an affine is singular.
    """
    label = np.asarray(label)
    label_affine = _check_grid("label", label.shape, label_affine)
    ct_affine = _check_grid("CT", ct_shape, ct_affine)
    over = outside_mm(label.shape, label_affine, ct_shape, ct_affine)
    allowed = 0.5 * np.linalg.norm(ct_affine[:3, :3], axis=0) + outside_tolerance_mm
    if np.any(over > allowed):
        axis = int(np.argmax(over - allowed))
        raise ValueError(
            f"label grid {label.shape} reaches {over[axis]:.1f} mm beyond the CT volume "
            f"{tuple(int(n) for n in ct_shape)} along CT axis {AXES[axis]} (allowed "
            f"{allowed[axis]:.1f} mm: half a voxel + {outside_tolerance_mm:g} mm); label and CT "
            "do not share a geometry"
        )
    mapping = exact_mapping(label.shape, label_affine, ct_affine, grid_tolerance_mm)
    if mapping is not None:
        return copy_exact(label, *mapping, ct_shape), "exact"
    return resample_nearest(label, label_affine, ct_shape, ct_affine), "nearest"


# ----------------------------------------------------------------------------- coverage
def _box_on_ct(label_shape: Sequence[int], transform: np.ndarray) -> tuple[np.ndarray, ...]:
    """(min, max) CT index coordinates, per CT axis, of the label grid's outer voxel faces."""
    faces = np.array(list(product(*[(-0.5, n - 0.5) for n in label_shape])), dtype=np.float64)
    at = faces @ transform[:3, :3].T + transform[:3, 3]
    return at.min(axis=0), at.max(axis=0)


def coverage(
    label_shape: Sequence[int],
    label_affine: np.ndarray,
    ct_shape: Sequence[int],
    ct_affine: np.ndarray,
) -> dict | None:
    """Return the part of the CT grid that the label grid covers, or ``None`` when it covers
    all of it: ``{"i": [first, last], "j": [...], "k": [...], "fraction": f}``, the CT voxel
    index ranges whose centres lie inside the label grid's outer faces (its bounding box, for an
    oblique grid) and the fraction of CT voxels in them. A CT voxel outside the label grid holds
    no label because nobody drew there, not because it is background."""
    lo, hi = _box_on_ct(label_shape, voxel_transform(label_affine, ct_affine))
    n = np.asarray(ct_shape, dtype=np.int64)
    first = np.clip(np.ceil(lo - 1e-3), 0, n - 1).astype(int)
    last = np.clip(np.floor(hi + 1e-3), 0, n - 1).astype(int)
    if np.all(first == 0) and np.all(last == n - 1):
        return None
    covered = np.maximum(last - first + 1, 0) * (hi >= -0.5) * (lo <= n - 0.5)
    ranges = {axis: [int(a), int(b)] for axis, a, b in zip(AXES, first, last, strict=True)}
    return {**ranges, "fraction": round(float(np.prod(covered) / np.prod(n)), 6)}


def open_ends(
    label: np.ndarray, label_affine: np.ndarray, ct_shape: Sequence[int], ct_affine: np.ndarray
) -> list[str]:
    """Return a line per face of the label grid that ends inside the CT (CT voxels lie beyond
    it) while holding labelled voxels: the organ goes on past the label's edge, unlabelled."""
    transform = voxel_transform(label_affine, ct_affine)
    label = np.asarray(label)
    out = []
    for axis, n in enumerate(label.shape):
        ct_axis = int(np.argmax(np.abs(transform[:3, axis])))
        for end, beyond in ((0, -0.5), (n - 1, n - 0.5)):
            # A basic-index view: ``take`` would copy (and for a 512x512x240 label, slowly).
            count = int(np.count_nonzero(label[(slice(None),) * axis + (end,)]))
            if not count:
                continue
            centre = (np.asarray(label.shape, dtype=np.float64) - 1) / 2
            centre[axis] = beyond
            edge = float((transform[:3, :3] @ centre + transform[:3, 3])[ct_axis])
            inner = centre.copy()
            inner[axis] = end
            outward = edge - float((transform[:3, :3] @ inner + transform[:3, 3])[ct_axis])
            room = edge - 0.25 if outward < 0 else ct_shape[ct_axis] - 1 - 0.25 - edge
            if room > 0:
                out.append(
                    f"label grid ends at CT {AXES[ct_axis]} = {edge:.1f} (the CT runs "
                    f"0..{ct_shape[ct_axis] - 1}) with {count} labelled voxels on its edge "
                    "plane: the organ may go on beyond the label, unlabelled"
                )
    return out


def dropped_voxels(
    label: np.ndarray, label_affine: np.ndarray, ct_shape: Sequence[int], ct_affine: np.ndarray
) -> int:
    """Return how many labelled voxels have their centre outside the CT grid (beyond half a
    CT voxel): within ``place_label``'s outside tolerance, but lost by the placement."""
    transform = voxel_transform(label_affine, ct_affine)
    lo, hi = _box_on_ct(np.asarray(label).shape, transform)
    n = np.asarray(ct_shape, dtype=np.float64)
    # 1e-3 voxel: DS values are rounded on write, so a grid equal to the CT's sticks out by
    # ~1e-5 voxel (the phantom's labels do).
    if np.all(lo >= -0.5 - 1e-3) and np.all(hi <= n - 0.5 + 1e-3):
        return 0  # the whole grid lies inside: nothing can fall off
    ijk = np.argwhere(np.asarray(label) > 0).astype(np.float64)
    at = ijk @ transform[:3, :3].T + transform[:3, 3]
    inside = np.all((at >= -0.5 - 1e-3) & (at < n - 0.5 + 1e-3), axis=1)
    return int(np.count_nonzero(~inside))
