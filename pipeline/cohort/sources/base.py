"""The protocol every cohort source implements, and what its ``read`` returns.

A source turns one input layout into (HU volume, affine, label on the same grid) per case. The
shared ingest core (``pipeline.cohort.ingest``) does everything else the same way for every
source: the provenance hash, the label checks, the atomic case folder, the manifest row, the
worker processes. A source never writes a file.

Adding a source is one file in this folder that defines a class with ``name`` and these three
methods and sets ``SOURCE = ThatClass`` (the registry, ``pipeline.cohort.sources.registry``,
finds it by listing the folder). See the README, "Adding a cohort source".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np


@dataclass(frozen=True)
class Located:
    """The files a case is read from: ``files`` below ``root`` (hashed by name and bytes, in
    sorted order) and the ``label`` file (hashed last)."""

    root: Path
    files: list[Path]
    label: Path


@dataclass(frozen=True)
class CaseVolume:
    """One case read by its source: the volume, its label on the same grid, and what the
    manifest row records about them.

    ``hu``: int16 HU (x, y, z); ``affine``: 4x4 voxel -> RAS mm; ``label``: uint8 {0, 1} on
    ``hu``'s grid; ``placement``: how the label was placed ("copy", "resampled", ...);
    ``warning``: a source-level warning (or ``None``); ``record``: extra manifest fields.
    """

    hu: np.ndarray
    affine: np.ndarray
    label: np.ndarray
    placement: str
    spacing: list[float]
    warning: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


class CohortSource(Protocol):
    """A layout of input cases. Instances are built with ``(params, images, labels)`` and must
    pickle (the ingest core sends them to worker processes)."""

    name: ClassVar[str]

    def cases(self) -> list[Any]:
        """The cases in order, each with a ``case_id``; ``StageError`` naming the folder when
        there is none."""

    def locate(self, case: Any) -> Located:
        """The files of ``case``; ``ValueError`` naming the label file when it is missing."""

    def read(self, case: Any, label: Path) -> CaseVolume:
        """Read ``case`` with its ``label`` file; ``ValueError`` naming the file on bad input."""
