"""NIfTI cohorts in the Medical Segmentation Decathlon layout as a source of HU volumes.

Layout (Antonelli et al., "The Medical Segmentation Decathlon", Nat Commun 2022; Task07
Pancreas, portal-venous CT from Memorial Sloan Kettering)::

    imagesTr/pancreas_001.nii.gz   CT in HU
    labelsTr/pancreas_001.nii.gz   0 background, 1 pancreas, 2 tumour (same name)

The case id is the file name without its suffix. Which label values count as "pancreas" is a
parameter (``ingest.decathlon.pancreas_values``, default 1 and 2 merged: the tumour lies inside
the organ, and the TCIA labels this pipeline was built on outline the whole gland). The image
grid is the CT grid; the label is placed on it by ``place_label`` like any other label
(``DecathlonSource`` below; the shared core ``pipeline.cohort.ingest`` does the rest). Files whose
names start with "." are skipped: the
Decathlon archives carry macOS "._" resource files beside every volume.

Every bad input raises ``ValueError`` naming the file. Nothing here writes to disk and no
function mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cohort.label_checks import PlacedLabel, place_nifti
from pipeline.cohort.sources.base import CaseVolume, Located
from pipeline.errors import StageError
from pipeline.io.nifti import NIFTI_SUFFIXES, load_label, read_volume
from pipeline.params.ingest import IngestParams


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


def decathlon_placed(
    case: DecathlonCase, shape: tuple, affine: np.ndarray, params: IngestParams
) -> PlacedLabel:
    """Return the 0/1 pancreas mask of ``case``'s label file on the image grid, with its
    coverage record and warnings (``place_nifti``); raises ``ValueError`` naming the file when
    missing, without pancreas values or off the image."""
    raw, label_affine = load_label(case.label)  # names the file when missing or unreadable
    wanted = params.decathlon.pancreas_values
    mask = pancreas_mask(raw, wanted)
    if not mask.any():
        present = sorted(int(v) for v in np.unique(raw))
        raise ValueError(
            f"{case.label}: no voxel holds a pancreas value {list(wanted)} (values {present})"
        )
    return place_nifti(mask, label_affine, shape, affine, params, case.label)


def decathlon_label(
    case: DecathlonCase, shape: tuple, affine: np.ndarray, params: IngestParams
) -> tuple[np.ndarray, str]:
    """Return ``(0/1 pancreas mask on the image grid, placement)``: ``decathlon_placed``'s."""
    placed = decathlon_placed(case, shape, affine, params)
    return placed.mask, placed.placement


@dataclass(frozen=True)
class DecathlonSource:
    """``ingest.source: decathlon``: ``images`` is a task's imagesTr/ (CT in HU, NIfTI),
    ``labels`` its labelsTr/ (same names). The image grid is the CT grid; the label is placed on
    it by physical geometry like any other label."""

    params: IngestParams
    images: Path
    labels: Path
    name = "decathlon"

    def cases(self) -> list[DecathlonCase]:
        """Every image of ``images`` with its label; ``StageError`` naming a missing or empty
        folder."""
        try:
            return find_decathlon_cases(self.images, self.labels)
        except ValueError as exc:
            raise StageError(str(exc)) from None

    def locate(self, case: DecathlonCase) -> Located:
        """The image file and the label file of the same name."""
        if not case.label.is_file():
            raise ValueError(f"{case.label}: label file not found for case {case.case_id}")
        return Located(case.image.parent, [case.image], case.label)

    def read(self, case: DecathlonCase, label: Path) -> CaseVolume:
        """The image in HU on its own grid and the pancreas values of ``label`` placed on it."""
        hu, affine = read_hu_volume(case.image)
        placed = decathlon_placed(case, hu.shape, affine, self.params)
        spacing = [round(float(s), 6) for s in np.linalg.norm(affine[:3, :3], axis=0)]
        warning = "; ".join(placed.warnings) or None
        return CaseVolume(
            hu, affine, placed.mask, placed.placement, spacing, warning, dict(placed.record)
        )


SOURCE = DecathlonSource
