"""NIfTI cohorts in the Medical Segmentation Decathlon layout as a source of HU volumes.

Layout (Antonelli et al., "The Medical Segmentation Decathlon", Nat Commun 2022; Task07
Pancreas, portal-venous CT from Memorial Sloan Kettering)::

    imagesTr/pancreas_001.nii.gz   CT in HU
    labelsTr/pancreas_001.nii.gz   0 background, 1 pancreas, 2 tumour (same name)

The case id is the file name without its suffix. Which label values count as "pancreas" is a
parameter (``ingest.decathlon.pancreas_values``, default 1 and 2 merged: the tumour lies inside
the organ, and the TCIA labels this pipeline was built on outline the whole gland). The image
grid is the CT grid; the label is placed on it by ``place_label`` like any other label, in
``pipeline/cohort/sources/decathlon_ingest.py``. Files whose names start with "." are skipped: the
Decathlon archives carry macOS "._" resource files beside every volume.

Every bad input raises ``ValueError`` naming the file. Nothing here writes to disk and no
function mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io.nifti import NIFTI_SUFFIXES, read_volume


@dataclass(frozen=True)
class DecathlonCase:
    """One image file and the label file of the same name (which may be missing)."""

    case_id: str
    image: Path
    label: Path


def _stem(name: str) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_decathlon_cases(images: str | Path, labels: str | Path) -> list[DecathlonCase]:
    """Return one case per NIfTI file in ``images`` (e.g. imagesTr/), sorted by case id, each
    paired with the file of the same name in ``labels`` (e.g. labelsTr/), missing or not.

    Raises ``ValueError`` naming the folder when it is absent or holds no NIfTI file.
    """
    images, labels = Path(images), Path(labels)
    if not images.is_dir():
        raise ValueError(f"{images}: images folder not found (expected e.g. imagesTr/)")
    cases = [
        DecathlonCase(stem, path, labels / path.name)
        for path in sorted(images.iterdir())
        if path.is_file() and not path.name.startswith(".") and (stem := _stem(path.name))
    ]
    if not cases:
        raise ValueError(f"{images}: no NIfTI images (expected e.g. pancreas_001.nii.gz)")
    return cases


def read_hu_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D CT NIfTI; return ``(int16 HU in file index order, 4x4 RAS affine)``.

    The NIfTI scaling (scl_slope, scl_inter) is applied and values rounded to whole HU, as the
    DICOM path stores them. Raises ``ValueError`` naming the file if it is unreadable, not 3D,
    not finite, or outside the int16 range.
    """
    data, affine = read_volume(path, "image")
    if data.dtype != np.int16:
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{path}: image holds non-finite values")
        info = np.iinfo(np.int16)
        if data.min() < info.min or data.max() > info.max:
            raise ValueError(f"{path}: HU range {data.min():g}..{data.max():g} exceeds int16")
        data = np.rint(data).astype(np.int16)
    return np.asfortranarray(data), affine


def pancreas_mask(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Return a new uint8 0/1 mask: 1 where ``label`` holds one of ``values``."""
    return np.isin(label, np.asarray(values)).astype(np.uint8)
