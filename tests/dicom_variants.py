"""Hospital-style variants of the real Pancreas-CT patient, built at test time in tmp folders.

Nothing here is copied into the repository: each helper reads the read-only mirror and writes
re-encoded or re-labelled copies (or links to the untouched originals) below a tmp path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

CASE = "PANCREAS_0001"
LABELS = "TCIA_pancreas_labels-02-05-2017"


def real_series_files(real_data_dir: Path) -> list[Path]:
    """The 240 slices 1-001.dcm .. 1-240.dcm of the real patient, in InstanceNumber order."""
    files = sorted((real_data_dir / "pancreas_ct" / "Pancreas-CT" / CASE).rglob("*.dcm"))
    assert len(files) == 240, f"{real_data_dir}: expected 240 slices, found {len(files)}"
    return files


def link_files(files: list[Path], dest: Path, names: list[str] | None = None) -> list[Path]:
    """Symlink ``files`` into ``dest`` (under ``names`` if given); return the new paths."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(files):
        target = dest / (names[i] if names else src.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, target)
        out.append(target)
    return out


def rewrite(
    files: list[Path],
    dest: Path,
    edit: Callable[[Dataset, int], None],
    series_uid: str | None = None,
    prefix: str = "x",
) -> list[Path]:
    """Re-write ``files`` into ``dest`` after ``edit(ds, index)``; new SOP (and series) UIDs."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(files):
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if series_uid is not None:
            ds.SeriesInstanceUID = series_uid
        edit(ds, i)
        path = dest / f"{prefix}{i:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def set_pixels(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    """Replace the native pixel data by ``stored`` (16 bit, signed or unsigned)."""
    ds.PixelRepresentation = 1 if signed else 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()


def labels_dir(real_data_dir: Path) -> Path:
    return real_data_dir / "pancreas_ct" / LABELS


def require_tool(name: str) -> str:
    """Path of a command-line tool; a test FAILS without it (.ci/run installs dcmtk)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found on PATH: install dcmtk (apt-get install dcmtk)")
    return found
