"""Write a CT image series as single-frame DICOM files (CT Image Storage, PS3.3 A.3).

Used by the phantom cohort and by tests that need a small, controllable series. Stored pixels
are ``round((HU - intercept) / slope)`` so the reader's Modality LUT (PS3.3 C.11.1) gives HU back.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)


@dataclass(frozen=True)
class SeriesHeader:
    """Patient/study/series identity and geometry shared by every slice of a series.

    ``origin`` is the ImagePositionPatient (LPS, mm) of InstanceNumber 1; each later instance
    moves ``slice_step_mm`` along ``-normal`` so that instance 1 is the most superior slice, the
    order TCIA's Pancreas-CT series and labels use. ``slice_direction`` (a unit LPS vector)
    overrides that direction: TCIA's own series use orientation (1,0,0,0,-1,0), whose normal points
    inferior, with instances running along ``+normal``, so reproducing them needs ``(0, 0, -1)``.
    """

    patient_id: str
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm
    slice_step_mm: float
    slice_thickness_mm: float
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    modality: str = "CT"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    series_description: str = "Pancreas"
    manufacturer: str = "gvae-pipeline"
    image_comments: str = ""
    study_date: str = "20240101"
    slice_direction: tuple[float, float, float] | None = None


def slice_positions(header: SeriesHeader, n: int) -> np.ndarray:
    """Return the (n, 3) ImagePositionPatient of instances 1..n (LPS, mm)."""
    row, col = np.asarray(header.orientation[:3]), np.asarray(header.orientation[3:])
    normal = np.cross(row, col)
    step = -normal if header.slice_direction is None else np.asarray(header.slice_direction)
    k = np.arange(n, dtype=np.float64)[:, None]
    return np.asarray(header.origin, dtype=np.float64)[None, :] + k * header.slice_step_mm * step


def _dataset(header: SeriesHeader, filename: str, instance: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    # Derived from the series UID and instance number, so a rerun writes identical bytes
    # (DVC sees no change) while every instance still gets a distinct UID.
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[header.series_uid, str(instance)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(filename, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = header.modality
    ds.Manufacturer = header.manufacturer
    ds.PatientName = header.patient_id
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.StudyID = header.patient_id[-8:]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = header.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.SeriesDescription = header.series_description
    ds.StudyDescription = "Pancreas"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "FFS"
    ds.PositionReferenceIndicator = ""
    ds.KVP = 120
    ds.SliceThickness = header.slice_thickness_mm
    ds.PixelSpacing = [float(s) for s in header.pixel_spacing]
    ds.ImageOrientationPatient = [float(v) for v in header.orientation]
    ds.RescaleIntercept = header.rescale_intercept
    ds.RescaleSlope = header.rescale_slope
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed, so any intercept can be represented
    ds.BurnedInAnnotation = "NO"
    if header.image_comments:
        ds.ImageComments = header.image_comments
    return ds


def write_ct_series(
    out_dir: str | Path,
    hu: np.ndarray,
    header: SeriesHeader,
    filenames: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``hu`` (n, rows, cols), instance order, as n DICOM files in ``out_dir``.

    Returns the written paths. ``filenames`` defaults to TCIA's ``1-001.dcm`` pattern.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be (slices, rows, cols), got shape {hu.shape}")
    n, rows, cols = hu.shape
    names = list(filenames) if filenames is not None else [f"1-{i + 1:03d}.dcm" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} filenames for {n} slices")
    stored = np.round((hu.astype(np.float64) - header.rescale_intercept) / header.rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("HU values do not fit int16 storage with this slope/intercept")
    stored = stored.astype(np.int16)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    positions = slice_positions(header, n)
    normal = np.cross(np.asarray(header.orientation[:3]), np.asarray(header.orientation[3:]))
    now = _dt.datetime(2024, 1, 1, 12, 0, 0)
    paths = []
    for i in range(n):
        path = out_dir / names[i]
        ds = _dataset(header, str(path), i + 1)
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[i]]
        ds.SliceLocation = round(float(positions[i] @ normal), 4)
        ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.Rows, ds.Columns = rows, cols
        ds.PixelData = stored[i].tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
