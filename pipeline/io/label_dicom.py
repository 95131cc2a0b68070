"""DICOM SEG and RTSTRUCT labels -> a uint8 mask on the CT grid, placed by physical geometry.

Hospitals and archives export segmentations as DICOM objects beside the images, not as NIfTI.
Both kinds are tied to the CT by references, never by file names or frame numbers:

- Frame of Reference (PS3.3 C.7.4.1): coordinates in another patient frame mean nothing on this
  CT, so a FrameOfReferenceUID other than the CT's is rejected.
- Referenced series: SEG's ReferencedSeriesSequence (PS3.3 C.12.2, Common Instance Reference)
  and RTSTRUCT's RTReferencedSeriesSequence (C.8.8.5, Structure Set). When present, one of
  them must be the CT series; a label drawn on another series of the study is rejected.

SEG (PS3.3 A.51, C.8.20): every frame carries its own Plane Position (Patient) and Segment
Identification functional groups (C.7.6.16.2.3, C.8.20.3), orientation and pixel spacing come
from the Plane Orientation and Pixel Measures groups. Frames of the selected segments are
stacked by their position along the frame normal (frames exist only where there is label, so
gaps are normal) into a volume with its own RAS affine, which ``place_label`` puts on the CT
grid: an exact copy when the frames lie on the CT lattice (a SEG derived from the CT slices),
nearest neighbour otherwise, rejected when it reaches outside the CT. A LABELMAP SEG (DICOM
Supplement 243, SOP class 1.2.840.10008.5.1.4.1.1.66.7, dcmqi's ``--segmentationType labelmap``)
has no Segment Identification group: each pixel holds its segment number, so every frame is
stacked and a voxel is label where its value is one of the selected segments.

RTSTRUCT (PS3.3 A.19, C.8.8.6 ROI Contour): ContourData are (x, y, z) in patient LPS mm. Each
CLOSED_PLANAR contour is mapped to CT voxel indices through the inverse CT affine (built from
ImagePositionPatient, ImageOrientationPatient and PixelSpacing by ``read_series``), must lie on
one CT slice plane, and is filled with ``skimage.draw.polygon`` (pixels whose centre is inside).
Contours on one slice combine by exclusive or, so a contour inside another cuts a hole (the
even-odd rule; C.8.8.6.3 allows holes as separate contours, and keyhole contours fill the same).
A contour of fewer than 3 points or of zero area (rt-utils outlines an isolated pixel with one
point, a one-pixel line with two) outlines nothing: it is skipped, and the read returns a warning
naming it, rather than losing the whole label for one pixel.

Segments and ROIs are chosen by a case-insensitive regular expression on SegmentLabel / ROIName;
several matches are merged. Every error is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from skimage.draw import polygon

from pipeline.io.dicom_geometry import (
    LPS_TO_RAS,
    SeriesMeta,
    affine_ras,
    frame_geometry,
    frame_item,
    slice_normal,
)
from pipeline.io.label_geometry import place_label

LABEL_MODALITIES = ("SEG", "RTSTRUCT")
MAX_NAMED = 20  # names quoted in one error message
# A contour enclosing less than this (in CT pixels) is collinear points, not an outline: a
# polygon through pixel centres encloses at least half a pixel.
MIN_AREA_VOXELS = 1e-3


@dataclass(frozen=True)
class CtGrid:
    """What a DICOM label is checked and placed against: the CT's grid and identity."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # 4x4 RAS voxel -> mm, as ``read_series`` returns it
    frame_of_reference_uid: str
    series_uid: str


def ct_grid(affine: np.ndarray, meta: SeriesMeta) -> CtGrid:
    """Return the ``CtGrid`` of a series read by ``read_series``; its FrameOfReferenceUID comes
    from the first slice's header (CT Image IOD: Type 1). Raises ``ValueError`` naming the file
    when it is absent."""
    first = meta.files[0]
    header = pydicom.dcmread(first, stop_before_pixels=True, force=True)
    uid = str(header.get("FrameOfReferenceUID", "") or "")
    if not uid:
        raise ValueError(
            f"{first}: CT slice has no FrameOfReferenceUID; a DICOM label cannot be tied to it"
        )
    return CtGrid(
        tuple(int(n) for n in meta.shape), np.asarray(affine, float), uid, meta.series_uid
    )


def read_dicom_label(
    path: str | Path,
    grid: CtGrid,
    roi_pattern: str,
    grid_tolerance_mm: float,
    outside_tolerance_mm: float,
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Read a DICOM SEG or RTSTRUCT and return ``(uint8 mask of grid.shape, placement,
    warnings)``.

    ``placement`` is "seg-exact" / "seg-nearest" (how ``place_label`` put the frame stack on the
    grid) or "rtstruct-polygon"; ``warnings`` (each naming ``path``) name the RTSTRUCT contours
    skipped for enclosing no area. Raises ``ValueError`` naming ``path`` for an unreadable file,
    another modality, a frame of reference or series that is not the CT's, no segment/ROI name
    matching ``roi_pattern`` (the message lists them), or geometry off or outside the CT grid.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable DICOM file ({exc})") from exc
    modality = str(ds.get("Modality", ""))
    if modality not in LABEL_MODALITIES:
        listed = ", ".join(LABEL_MODALITIES)
        raise ValueError(f"{path}: Modality {modality!r} is not a label ({listed})")
    place = seg_on_grid if modality == "SEG" else rtstruct_on_grid
    try:
        check_references(ds, grid)
        mask, placement, warnings = place(
            ds, grid, roi_pattern, grid_tolerance_mm, outside_tolerance_mm
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return mask, placement, tuple(f"{path}: {w}" for w in warnings)


# ----------------------------------------------------------------------------- references
def _uids(items: list[Dataset], keyword: str) -> set[str]:
    return {str(item.get(keyword)) for item in items if item.get(keyword)}


def referenced_frames_and_series(ds: Dataset) -> tuple[set[str], set[str]]:
    """Return (FrameOfReferenceUIDs, referenced SeriesInstanceUIDs) a SEG or RTSTRUCT names."""
    if str(ds.get("Modality", "")) == "RTSTRUCT":
        frames = list(ds.get("ReferencedFrameOfReferenceSequence", []))
        series = [
            s
            for f in frames
            for study in f.get("RTReferencedStudySequence", [])
            for s in study.get("RTReferencedSeriesSequence", [])
        ]
        return _uids(frames, "FrameOfReferenceUID"), _uids(series, "SeriesInstanceUID")
    frame = {str(ds.FrameOfReferenceUID)} if ds.get("FrameOfReferenceUID") else set()
    return frame, _uids(list(ds.get("ReferencedSeriesSequence", [])), "SeriesInstanceUID")


def check_references(ds: Dataset, grid: CtGrid) -> None:
    """Raise ``ValueError`` unless ``ds`` is in the CT's frame of reference and, where it names
    series, names the CT series."""
    frames, series = referenced_frames_and_series(ds)
    if not frames:
        raise ValueError("no FrameOfReferenceUID: its coordinates cannot be tied to the CT")
    if grid.frame_of_reference_uid not in frames:
        raise ValueError(
            f"FrameOfReferenceUID {', '.join(sorted(frames))} differs from the CT series' "
            f"{grid.frame_of_reference_uid}: label and CT are in different patient coordinates"
        )
    if series and grid.series_uid not in series:
        raise ValueError(
            f"references series {', '.join(sorted(series))}, not the CT series {grid.series_uid}"
        )


def matching(names: dict[int, str], pattern: str, what: str) -> list[int]:
    """Return the numbers whose name matches ``pattern`` (``re.search``, case-insensitive);
    raise ``ValueError`` listing every name when none does."""
    regex = re.compile(pattern, re.IGNORECASE)
    hits = [number for number, name in names.items() if regex.search(name)]
    if not hits:
        listed = ", ".join(repr(n) for n in list(names.values())[:MAX_NAMED]) or "none"
        raise ValueError(
            f"no {what} name matches {pattern!r} (case-insensitive); {what}s: {listed}"
        )
    return hits


# ----------------------------------------------------------------------------- SEG
# Why not highdicom's reader (checked with highdicom 0.28.2): ``highdicom.seg.segread`` rejects
# a SEG whose Pixel Measures item has no SliceThickness (Type 1C only since CP 1426), and
# highdicom's own writer omits it when the source CT has none, as TCIA's Pancreas-CT slices do:
# it cannot read the SEG it writes from them. And ``Segmentation.get_volume`` stacks frames at
# the SEG's SpacingBetweenSlices or smallest frame gap, not the CT's step: frames on CT slices k
# and k + 3 only (which highdicom writes with SpacingBetweenSlices 3.0) become a two-slice 3 mm
# volume that ``place_label`` then resamples onto slices k..k + 4, tripling the label; the CT
# lattice is only known here (``_stack_step``). Decoding is pydicom's ``pixel_array`` either
# way (bit-packed BINARY and FRACTIONAL frames alike).
def _segment_number(ds: Dataset, frame: int) -> int:
    """The segment ``frame`` (0-based) belongs to, from its Segment Identification group."""
    item = frame_item(ds, frame, "SegmentIdentificationSequence")
    if item is None:
        raise ValueError(f"frame {frame + 1} has no SegmentIdentificationSequence")
    return int(item.ReferencedSegmentNumber)


def seg_masks(ds: Dataset, wanted: set[int]) -> tuple[np.ndarray, list[int]]:
    """Return ``(bool masks (n, rows, columns), their 0-based frame numbers)`` of the segments
    ``wanted``. BINARY: the frames of those segments, non-zero; FRACTIONAL: the same, at least
    half of MaximumFractionalValue (a voxel counts when it is at least half inside); LABELMAP:
    every frame, where the pixel value is one of the segment numbers (Supplement 243)."""
    n, rows, cols = int(ds.get("NumberOfFrames", 1)), int(ds.Rows), int(ds.Columns)
    try:
        pixels = np.asarray(ds.pixel_array).reshape(n, rows, cols)
    except Exception as exc:
        raise ValueError(
            f"pixel data does not decode into {n} frames of {rows}x{cols} ({exc})"
        ) from exc
    kind = str(ds.get("SegmentationType", "BINARY"))
    if kind == "LABELMAP":
        return np.isin(pixels, sorted(wanted)), list(range(n))
    frames = [f for f in range(n) if _segment_number(ds, f) in wanted]
    if kind == "FRACTIONAL":
        return pixels[frames] >= 0.5 * float(ds.get("MaximumFractionalValue", 255)), frames
    return pixels[frames] > 0, frames


def _stack_step(proj: np.ndarray, normal: np.ndarray, grid: CtGrid, tol_mm: float) -> float:
    """The slice step of the frame stack: the CT's own step along the frame normal when every
    frame lies on it, else the smallest gap between frame positions; raise if neither fits."""
    lps = (LPS_TO_RAS @ grid.affine)[:3, :3]
    along = np.abs(normal @ lps)  # each CT axis's step projected on the frame normal, mm
    offsets = proj - proj.min()
    gaps = np.diff(np.unique(np.round(offsets, 3)))  # frames of several segments share positions
    for step in (float(along.max()), float(gaps.min()) if gaps.size else 0.0):
        if step > tol_mm and np.all(
            np.abs(offsets / step - np.rint(offsets / step)) * step <= tol_mm
        ):
            return step
    raise ValueError(
        f"frame positions along the normal ({offsets.min():g}..{offsets.max():g} mm) are not on a "
        "regular slice lattice"
    )


def stack_frames(
    masks: np.ndarray,
    positions: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: np.ndarray,
    grid: CtGrid,
    tol_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack 2D frames ``(n, rows, cols)`` at ``positions`` (n, 3) LPS mm into
    ``(uint8 vol[x=column, y=row, k], RAS affine)``; frames at one position are merged.

    Raises ``ValueError`` when the frames are not one stack (in-plane origins differ by more
    than ``tol_mm``) or their positions are not on a regular lattice along the normal.
    """
    normal = slice_normal(orientation)
    proj = positions @ normal
    lateral = positions - np.outer(proj, normal)
    drift = float(np.linalg.norm(lateral - lateral[0], axis=1).max())
    if drift > tol_mm:
        raise ValueError(f"frames are not one stack: in-plane origins differ by {drift:.2f} mm")
    step = _stack_step(proj, normal, grid, tol_mm)
    index = np.rint((proj - proj.min()) / step).astype(np.int64)
    _, rows, cols = masks.shape
    vol = np.zeros((cols, rows, int(index.max()) + 1), dtype=np.uint8, order="F")
    for mask, k in zip(masks, index, strict=True):
        vol[:, :, k] |= mask.T.astype(np.uint8)
    origin = positions[int(np.argmin(proj))]
    return vol, affine_ras(orientation, pixel_spacing, origin, step)


def seg_on_grid(
    ds: Dataset, grid: CtGrid, pattern: str, grid_tol: float, outside_tol: float
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Place the frames of the SEG segments matching ``pattern`` on the CT grid (module doc)."""
    names = {
        int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])
    }
    wanted = set(matching(names, pattern, "segment"))
    masks, frames = seg_masks(ds, wanted)
    if not masks.any():
        raise ValueError(f"segment(s) {sorted(wanted)} have no voxels (an empty segmentation)")
    orientation, spacing, positions = frame_geometry(ds, frames)
    vol, affine = stack_frames(masks, positions, orientation, spacing, grid, grid_tol)
    label, method = place_label(vol, affine, grid.shape, grid.affine, grid_tol, outside_tol)
    return label, f"seg-{method}", ()


# ----------------------------------------------------------------------------- RTSTRUCT
def rtstruct_on_grid(
    ds: Dataset, grid: CtGrid, pattern: str, grid_tol: float, outside_tol: float
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Fill the contours of the RTSTRUCT ROIs matching ``pattern`` on the CT grid (module doc)."""
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", [])}
    wanted = matching({n: str(r.get("ROIName", "")) for n, r in rois.items()}, pattern, "ROI")
    for number in wanted:
        frame = str(rois[number].get("ReferencedFrameOfReferenceUID", ""))
        if frame and frame != grid.frame_of_reference_uid:
            raise ValueError(
                f"ROI {rois[number].ROIName!r} is in frame of reference {frame}, not the CT's "
                f"{grid.frame_of_reference_uid}"
            )
    contours, names = [], []
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        if number in wanted:
            for n, contour in enumerate(item.get("ContourSequence", []), 1):
                contours.append(contour)
                names.append(f"ROI {str(rois[number].ROIName)!r} contour {n}")
    if not contours:
        listed = ", ".join(repr(str(rois[n].ROIName)) for n in wanted)
        raise ValueError(f"ROI(s) {listed} have no contours")
    mask, skipped = fill_contours(contours, grid, grid_tol, outside_tol, names)
    if len(skipped) == len(contours):
        raise ValueError(f"none of the {len(contours)} contours encloses an area")
    warnings = ()
    if skipped:
        warnings = (
            f"{len(skipped)} of {len(contours)} RTSTRUCT contours enclose no area and were "
            f"skipped: {'; '.join(skipped[:MAX_NAMED])}",
        )
    return mask, "rtstruct-polygon", warnings


def contour_voxels(
    points_mm: np.ndarray, grid: CtGrid, tol_mm: float, outside_tol: float
) -> tuple[np.ndarray, int]:
    """Map contour points (n, 3) LPS mm to CT voxel indices; return ``(ijk (n, 3), slice k)``.

    Raises ``ValueError`` when the points are not on one CT slice plane (within ``tol_mm``) or
    reach beyond the CT's outermost voxel centres by more than half a voxel + ``outside_tol``.
    """
    to_voxel = np.linalg.inv(grid.affine) @ LPS_TO_RAS
    ijk = points_mm @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    k = int(np.rint(np.median(ijk[:, 2])))
    off = float(np.abs(ijk[:, 2] - k).max() * spacing[2])
    if off > tol_mm:
        raise ValueError(
            f"contour at z = {points_mm[0, 2]:g} mm is {off:.2f} mm off the CT slice planes"
        )
    shape = np.asarray(grid.shape)
    over = np.maximum(np.maximum(-ijk.min(axis=0), ijk.max(axis=0) - (shape - 1)), 0) * spacing
    allowed = 0.5 * spacing + outside_tol
    if np.any(over > allowed):
        axis = int(np.argmax(over - allowed))
        raise ValueError(
            f"contour at z = {points_mm[0, 2]:g} mm reaches {over[axis]:.1f} mm beyond the CT "
            f"volume along CT axis {'ijk'[axis]} (allowed {allowed[axis]:.1f} mm)"
        )
    return ijk, k


def enclosed_area(ij: np.ndarray) -> float:
    """Return the area (in voxels) a closed polygon of in-plane voxel indices (n, 2) encloses,
    by the shoelace formula; 0 for fewer than 3 points."""
    if len(ij) < 3:
        return 0.0
    x, y = ij[:, 0], ij[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def fill_contours(
    contours: list[Dataset],
    grid: CtGrid,
    tol_mm: float,
    outside_tol: float,
    names: list[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Return ``(uint8 CT-shaped fill (Fortran order), skipped)`` of CLOSED_PLANAR
    ``contours``, combined per slice by exclusive or. A contour of fewer than 3 points or of
    zero area (below ``MIN_AREA_VOXELS``) is left out and described in ``skipped`` by its name
    (``names[i]``, or "contour i + 1"); any other contour type, or ContourData that are not
    (x, y, z) triplets, is a ``ValueError``."""
    names = names or [f"contour {n}" for n in range(1, len(contours) + 1)]
    planes: dict[int, np.ndarray] = {}
    skipped = []
    in_plane = grid.shape[:2]
    for name, contour in zip(names, contours, strict=True):
        kind = str(contour.get("ContourGeometricType", ""))
        if kind != "CLOSED_PLANAR":
            raise ValueError(f"{name} is {kind!r}; only CLOSED_PLANAR contours outline an area")
        data = np.asarray(contour.get("ContourData", []), dtype=np.float64)
        if data.size % 3:
            raise ValueError(f"{name} has {data.size} ContourData values, not (x, y, z) points")
        if data.size == 0:
            skipped.append(f"{name} (no points)")
            continue
        ijk, k = contour_voxels(data.reshape(-1, 3), grid, tol_mm, outside_tol)
        if enclosed_area(ijk[:, :2]) < MIN_AREA_VOXELS:
            skipped.append(f"{name} ({len(ijk)} point(s) at z = {data[2]:g} mm, CT slice {k})")
            continue
        if not 0 <= k < grid.shape[2]:
            continue  # within the outside tolerance but off the grid: nothing to fill
        inside = np.zeros(in_plane, dtype=bool)
        inside[polygon(ijk[:, 0], ijk[:, 1], shape=in_plane)] = True
        planes[k] = planes[k] ^ inside if k in planes else inside
    out = np.zeros(grid.shape, dtype=np.uint8, order="F")
    for k, plane in planes.items():
        out[:, :, k] = plane
    return out, skipped


def dicom_labels_in(folder: str | Path) -> list[Path]:
    """Return the files below ``folder`` whose header says Modality SEG or RTSTRUCT, sorted;
    files that are not DICOM are passed over (the CT reader reports those)."""
    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # noqa: BLE001 - not DICOM, so not a label either
            continue
        if str(ds.get("Modality", "")).upper() in LABEL_MODALITIES:
            found.append(path)
    return found
