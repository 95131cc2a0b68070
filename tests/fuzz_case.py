"""The base case of the ingest fuzz suite, cut from the real patient, and the edits mutations use.

The base case is 8 slices of PANCREAS_0001 (InstanceNumbers 121-128, through the pancreas) with
the in-plane matrix cropped to 128 rows x 192 columns around the gland, and its TCIA label
cropped to the same grid. Cropping rewrites Rows, Columns and ImagePositionPatient (the
position of the first kept pixel, PS3.3 C.7.6.2.1.1) and slices the label with nibabel, which
moves its affine the same way; the base ingests with the label placed "exact" and its HU read
as pancreas. Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

INSTANCES = range(121, 129)  # label slices k = 120..127 (k = InstanceNumber - 1)
ROWS = slice(200, 328)  # pixel rows y kept
COLS = slice(180, 372)  # pixel columns x kept


@dataclass(frozen=True)
class Case:
    """One mutated copy of the base case: its folder, slice files (by InstanceNumber) and
    label file."""

    folder: Path
    files: list[Path]
    label: Path

    @property
    def series(self) -> Path:
        return self.files[0].parent


def real_series_dir(real_data_dir: Path) -> Path:
    return next(
        (real_data_dir / "pancreas_ct" / "Pancreas-CT" / "PANCREAS_0001").rglob("1-001.dcm")
    ).parent


def build_template(real_data_dir: Path, dest: Path) -> tuple[Path, Path]:
    """Write the base case's slices to ``dest/series`` and its label to ``dest/label.nii.gz``;
    return (series folder, label file)."""
    series = dest / "series"
    series.mkdir(parents=True)
    for instance in INSTANCES:
        ds = pydicom.dcmread(real_series_dir(real_data_dir) / f"1-{instance:03d}.dcm")
        pixels = ds.pixel_array[ROWS, COLS]
        iop = np.asarray(ds.ImageOrientationPatient, float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        first = (
            np.asarray(ds.ImagePositionPatient, float)
            + COLS.start * col_spacing * iop[:3]
            + ROWS.start * row_spacing * iop[3:]
        )
        ds.ImagePositionPatient = [f"{v:.6f}".rstrip("0").rstrip(".") for v in first]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(series / f"1-{instance:03d}.dcm")
    label = nib.load(
        real_data_dir / "pancreas_ct" / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz"
    )
    k = slice(INSTANCES[0] - 1, INSTANCES[-1])
    crop = label.slicer[COLS, ROWS, k]
    out = dest / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(crop.dataobj).astype(np.uint8), crop.affine), out)
    return series, out


def copy_case(template: Path, images: Path, labels: Path, number: int) -> Case:
    """Copy the base case as ``images/PANCREAS_<number>`` with ``labels/label<number>``."""
    folder = images / f"PANCREAS_{number:04d}"
    shutil.copytree(template / "series", folder / "series")
    labels.mkdir(parents=True, exist_ok=True)
    label = labels / f"label{number:04d}.nii.gz"
    shutil.copyfile(template / "label.nii.gz", label)
    return Case(folder, sorted((folder / "series").iterdir()), label)


# ----------------------------------------------------------------------------- DICOM edits
def edit(path: Path, **changes) -> None:
    """Set (or, with value ``None``, delete) attributes of one file, saved in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def edit_all(case: Case, **changes) -> None:
    for path in case.files:
        edit(path, **changes)


def set_raw(path: Path, keyword: str, text: str) -> None:
    """Write ``text`` as the value of ``keyword`` byte for byte, valid for its VR or not (a
    hostile file: pydicom refuses to set 'abc' as a DS itself)."""
    ds = pydicom.dcmread(path)
    tag = Tag(tag_for_keyword(keyword))
    raw = text.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, True, True)
    ds.save_as(path)


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def without_preamble(path: Path) -> None:
    """Drop the 128-byte preamble and "DICM" (PS3.10 7.1): group 0002 comes first."""
    path.write_bytes(path.read_bytes()[132:])


def bare_dataset(path: Path) -> None:
    """Rewrite the file as its data set alone: no preamble, no File Meta Information."""
    ds = pydicom.dcmread(path)
    with open(path, "wb") as raw:
        out = DicomFileLike(raw)
        out.is_little_endian, out.is_implicit_VR = True, True
        write_dataset(out, ds)


# ----------------------------------------------------------------------------- label edits
def label_data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(case.label)
    return np.asanyarray(img.dataobj), img.affine


def save_label(case: Case, data: np.ndarray, affine: np.ndarray, **header) -> None:
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, case.label)


def set_label_dims(case: Case, dims: tuple[int, int, int]) -> None:
    """Rewrite the dim field of the label's header, leaving its voxel data as it is."""
    raw = bytearray(gzip.decompress(case.label.read_bytes()))
    header = np.frombuffer(raw, dtype="<i2", count=8, offset=40).copy()
    header[1:4] = dims
    raw[40:56] = header.tobytes()
    case.label.write_bytes(gzip.compress(bytes(raw)))
