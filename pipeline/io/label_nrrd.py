"""NRRD labels -> ``(uint8 label, RAS affine)``, to be placed on the CT by their geometry.

3D Slicer saves segmentations as NRRD by default (``Segmentation.seg.nrrd``), and many tools
export plain NRRD label images. Both are read here with pynrrd, the teem NRRD format
(teem.sourceforge.net/nrrd/format.html) in pure Python: a header of ``field: value`` lines and
``key:=value`` pairs, then the samples, raw or gzip/bzip2-compressed.

Geometry: ``space directions`` holds one vector per axis (``none`` for a non-spatial axis),
``space origin`` the centre of the first sample, both in the named ``space``. Only anatomical
spaces say which way the patient lies (``right-anterior-superior``, ``left-anterior-superior``,
``left-posterior-superior`` or their abbreviations RAS, LAS, LPS); a NRRD in ``scanner-xyz``, a
bare ``space dimension`` or without directions or origin cannot be tied to the CT and is
refused. The returned affine maps ``label[i, j, k]`` (axes in the file's order, the fastest
first) to RAS mm, as a NIfTI affine does, and ``label_geometry.place_label`` puts it on the CT.

A label image (no segment fields) is returned as stored; ``label_checks.binary_label`` rules on
its values. A Slicer segmentation carries ``Segment<k>_ID`` for k = 0, 1, ... with
``Segment<k>_Name``, ``Segment<k>_LabelValue`` (default 1) and ``Segment<k>_Layer`` (default k,
as Slicer reads files written before shared layers), and a 4D array whose non-spatial axis
holds the layers (segments that overlap lie in different layers). The pancreas is every segment
whose name matches ``ingest.roi_pattern`` (``re.search``, case-insensitive, as SegmentLabel and
ROIName are for DICOM labels): a voxel is label where its layer holds that segment's value.
Slicer writes the segments on the reference volume's grid, or on a crop of it whose origin it
moves to match, so the file's own geometry places them either way (its
``Segmentation_ReferenceImageExtentOffset`` is not needed).

A detached header (``data file:``, Slicer's ``.seg.nhdr``) is refused: its samples live in
another file, which the provenance hash would not cover. Every error is a ``ValueError`` naming
the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nrrd
import numpy as np

from pipeline.io.label_dicom import matching
from pipeline.io.nifti import uint8_label, unreadable_as

NRRD_SUFFIXES = (".nrrd",)  # Slicer's ".seg.nrrd" included
# Signs that turn each named space's axes into RAS (NRRD spec, "space").
SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}


def nrrd_affine(header: dict) -> tuple[np.ndarray, int | None]:
    """Return ``(4x4 RAS affine of the 3 spatial axes, index of the non-spatial axis or None)``
    from a pynrrd header; ``ValueError`` when the geometry is missing or not anatomical."""
    space = str(header.get("space", "") or "")
    signs = SPACE_TO_RAS.get(space.lower())
    if signs is None:
        named = f"space {space!r}" if space else "no 'space' field"
        raise ValueError(
            f"NRRD has {named}; only {', '.join(SPACE_TO_RAS)} say where the patient lies, "
            "so it cannot be placed on the CT by geometry"
        )
    if header.get("space directions") is None or header.get("space origin") is None:
        raise ValueError("NRRD has no 'space directions' or 'space origin': no geometry")
    directions = np.asarray(header["space directions"], dtype=np.float64)
    origin = np.asarray(header["space origin"], dtype=np.float64)
    spatial = [i for i, row in enumerate(directions) if np.all(np.isfinite(row))]
    other = [i for i in range(len(directions)) if i not in spatial]
    if len(spatial) != 3 or len(other) > 1 or origin.shape != (3,):
        raise ValueError(
            f"NRRD has {len(spatial)} spatial and {len(other)} other axes (sizes "
            f"{list(header.get('sizes', []))}); a label needs 3 spatial axes and at most one "
            "axis of layers"
        )
    if not np.all(np.isfinite(origin)):
        raise ValueError(f"NRRD space origin {origin.tolist()} is not finite")
    to_ras = np.diag([*signs, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = directions[spatial].T  # one column per axis, in the file's space
    affine[:3, 3] = origin
    return to_ras @ affine, (other[0] if other else None)


def segments(header: dict) -> dict[int, tuple[str, int, int]]:
    """Return Slicer's segments ``{k: (name, label value, layer)}`` (empty for a label image),
    read while ``Segment<k>_ID`` exists, with the defaults of the module docstring."""
    found: dict[int, tuple[str, int, int]] = {}
    while f"Segment{len(found)}_ID" in header:
        k = len(found)
        name = str(header.get(f"Segment{k}_Name", header[f"Segment{k}_ID"]))
        try:
            value = int(str(header.get(f"Segment{k}_LabelValue", "1")).strip())
            layer = int(str(header.get(f"Segment{k}_Layer", k)).strip())
        except ValueError as exc:
            raise ValueError(f"segment {k} ({name!r}): {exc}") from exc
        found[k] = (name, value, layer)
    return found


def segment_mask(
    data: np.ndarray, layer_axis: int | None, header: dict, pattern: str
) -> np.ndarray:
    """Return the uint8 0/1 union of the segments whose name matches ``pattern``; ``ValueError``
    listing the names when none does, or when a segment's layer is not in the file."""
    found = segments(header)
    wanted = matching({k: name for k, (name, _, _) in found.items()}, pattern, "segment")
    layers = data[None] if layer_axis is None else np.moveaxis(data, layer_axis, 0)
    mask = np.zeros(layers.shape[1:], dtype=bool, order="F")
    for k in wanted:
        name, value, layer = found[k]
        if not 0 <= layer < len(layers):
            raise ValueError(f"segment {k} ({name!r}) is in layer {layer}, of {len(layers)}")
        mask |= layers[layer] == value
    return mask.astype(np.uint8)


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Within it, a ``ValueError`` not yet naming ``path`` is raised again with it in front."""
    try:
        yield
    except ValueError as exc:
        if str(exc).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: {exc}") from exc


def read_nrrd_label(path: str | Path, pattern: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a NRRD label image or Slicer segmentation; return ``(uint8 array in file index order,
    4x4 RAS affine)``: a segmentation's segments matching ``pattern`` as 0/1, a label image's
    values as stored (integers in 0..255). Raises ``ValueError`` naming the file when it is
    missing, unreadable, detached, without anatomical geometry, or not a label (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: label file not found")
    with unreadable_as(path, "NRRD label"), open(path, "rb") as fh:
        header = nrrd.read_header(fh)
        with _naming(path):
            if "data file" in header or "datafile" in header:
                raise ValueError(
                    "NRRD is a detached header (its samples are in another file): save the "
                    "segmentation as one .nrrd / .seg.nrrd"
                )
            affine, layer_axis = nrrd_affine(header)
        data = nrrd.read_data(header, fh, str(path), index_order="F")
    with _naming(path):
        if segments(header):
            return segment_mask(data, layer_axis, header, pattern), affine
        if layer_axis is not None:
            raise ValueError(
                f"NRRD label image has a non-spatial axis (sizes {list(header['sizes'])}) and "
                "no Slicer segment fields: a label image must be 3D"
            )
        return uint8_label(data, path), affine
