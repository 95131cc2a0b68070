"""DICOM SEG and RTSTRUCT labels written at test time from a mask on a CT grid, and the real
patient they are written for (``real_case``), ingested with each (``ingest_with``).

SEG is written with highdicom, the way a hospital's segmentation tool would, from the real CT
slices the mask touches. RTSTRUCT is written with pydicom by hand: highdicom has no RT Structure
Set support, and rt-utils (the PyPI library for it) was last released in January 2023, pins
nothing for pydicom 3 and pulls in the full opencv-python; its contour extraction is OpenCV's
findContours, which this does with ``skimage.measure.find_contours`` instead. The attributes are
those of PS3.3 A.19 (RT Structure Set IOD) that ``pipeline/io/label_dicom.py`` reads, plus the
Type 1 ones a viewer needs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage.measure import find_contours

from pipeline.cohort import ingest
from pipeline.cohort.sources import tcia
from pipeline.io.dicom_read import read_series
from pipeline.params.loader import IngestParams

CASE = "PANCREAS_0001"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (PS3.4), by usage


def real_case(real_data_dir: Path, tmp: Path) -> dict:
    """The real patient for label tests: its case folder, NIfTI label, the series as
    ``read_series`` returns it (read once: ``series``, ``hu``, ``affine``, ``meta``), a scratch
    folder ``tmp`` and ``truth``, the NIfTI label on the series' grid by the data README's own
    pairing (``label[x, y, k]`` is the slice with InstanceNumber k + 1), independent of the
    geometry code under test."""
    src = real_data_dir / "pancreas_ct"
    case_dir = src / "Pancreas-CT" / CASE
    series = read_series(case_dir)
    hu, affine, meta = series
    nifti = src / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz"
    raw = np.asanyarray(nib.load(nifti).dataobj)
    truth = np.asfortranarray(raw[:, :, np.asarray(meta.instance_numbers) - 1].astype(np.uint8))
    return {
        "case_dir": case_dir,
        "nifti": nifti,
        "series": series,
        "hu": hu,
        "meta": meta,
        "affine": affine,
        "truth": truth,
        "tmp": tmp,
    }


@contextmanager
def series_read_once(real: dict) -> Iterator[None]:
    """Within it, the TCIA source reads ``real["series"]`` instead of the DICOM files again;
    ``ingest_case`` still runs whole (label lookup, hash, placement, checks, writes)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tcia, "read_series", lambda *args, **kwargs: real["series"])
        yield


def ingest_with(real: dict, name: str, label: Path, as_name: str = "label0001.dcm", **params):
    """Put ``label`` in a fresh labels folder as ``as_name`` and ingest the real case with it;
    return (row, label written or None)."""
    labels = real["tmp"] / name / "labels"
    labels.mkdir(parents=True)
    os.symlink(label, labels / as_name)
    out = real["tmp"] / name / "out"
    row = ingest.ingest_case(real["case_dir"], labels, out, IngestParams(workers=1, **params))
    written = None
    if row["status"] == "ok":
        written = np.asanyarray(nib.load(out / CASE / ingest.LABEL_FILE).dataobj)
    return row, written


def assert_pancreas_hu(row: dict, warned: bool = False) -> None:
    """The row is ``ok``, with the HU of pancreas inside its label (102.6 +/- 30.9 by the data
    README) and a warning only when ``warned``."""
    assert row["status"] == "ok", row
    assert 98.0 <= row["label_hu_mean"] <= 108.0 and row["label_hu_sd"] < 40.0, row
    assert (row["warning"] is not None) == warned, row


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def write_seg(
    path: Path, files: Sequence[Path], label: np.ndarray, segment_label: str = "Pancreas"
) -> Path:
    """Write a BINARY SEG of ``label`` (CT grid ``[x=column, y=row, k]``, ``files[k]`` = slice k)
    whose source images are only the slices the label touches; return ``path``."""
    import highdicom as hd

    touched = [k for k in range(label.shape[2]) if label[:, :, k].any()]
    sources = [pydicom.dcmread(files[k]) for k in touched]
    pixels = np.stack([label[:, :, k].T > 0 for k in touched])  # (frames, rows, cols)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Pancreas,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    with warnings.catch_warnings():
        # TCIA's PatientName is "PANCREAS_0001", one component; highdicom warns, rightly, but
        # the real header is what a hospital SEG would copy.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=generate_uid(),
            series_number=900,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="gvae-pipeline tests",
            manufacturer_model_name="label fixture",
            software_versions="0",
            device_serial_number="0",
        )
    seg.save_as(path)
    return path


def outlines_mm(mask2d: np.ndarray, k: int, affine: np.ndarray, every: int = 1) -> list[np.ndarray]:
    """Closed outlines (n, 3) in patient LPS mm of ``mask2d`` ``[x, y]`` on slice ``k``.

    ``find_contours`` at 0.5 runs half-way between pixel centres, so a pixel centre lies inside
    an outline exactly when the pixel is in the mask; the zero border closes outlines at edges.
    ``every`` > 1 keeps every n-th point: a coarser polygon, as drawing tools simplify outlines,
    which no longer reproduces the mask exactly.
    """
    padded = np.pad(mask2d.astype(np.float64), 1)
    out = []
    for contour in find_contours(padded, 0.5):
        ij = contour[:-1] - 1.0  # last point repeats the first; undo the padding
        if len(ij[::every]) >= 3:
            ij = ij[::every]
        voxels = np.column_stack([ij, np.full(len(ij), k), np.ones(len(ij))])
        ras = voxels @ np.asarray(affine).T
        out.append(ras[:, :3] * np.array([-1.0, -1.0, 1.0]))  # RAS -> LPS
    return out


def _contour(points: np.ndarray, image: Dataset) -> Dataset:
    item = Dataset()
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    item.ContourData = [f"{v:.6f}" for v in points.ravel()]
    item.ContourImageSequence = [_image_ref(image)]
    return item


def write_rtstruct(
    path: Path,
    files: Sequence[Path],
    affine: np.ndarray,
    rois: dict[str, np.ndarray],
    frame_of_reference_uid: str | None = None,
    every: int = 1,
) -> Path:
    """Write an RTSTRUCT with one ROI per ``rois`` entry (name -> mask on the CT grid
    ``[x, y, k]``, ``files[k]`` = slice k, ``affine`` its RAS affine) outlined by
    ``outlines_mm(..., every)``; return ``path``."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ct = headers[0]
    frame = frame_of_reference_uid or str(ct.FrameOfReferenceUID)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, ct.get(keyword, ""))
    ds.StudyInstanceUID, ds.StudyID = ct.StudyInstanceUID, ct.get("StudyID", "")
    ds.StudyDate, ds.StudyTime = ct.get("StudyDate", ""), ct.get("StudyTime", "")
    ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 901
    ds.Manufacturer, ds.InstanceNumber = "gvae-pipeline tests", 1
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "PANCREAS", "", ""
    series = Dataset()
    series.SeriesInstanceUID = ct.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(h) for h in headers]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
    study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame
    ref_frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [ref_frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, mask) in enumerate(rois.items(), 1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "MANUAL"
        ds.StructureSetROISequence.append(roi)
        contours = Dataset()
        contours.ReferencedROINumber, contours.ROIDisplayColor = number, [255, 0, 0]
        contours.ContourSequence = [
            _contour(points, headers[k])
            for k in range(mask.shape[2])
            if mask[:, :, k].any()
            for points in outlines_mm(mask[:, :, k], k, affine, every)
        ]
        ds.ROIContourSequence.append(contours)
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        ds.RTROIObservationsSequence.append(observation)
    ds.save_as(path, enforce_file_format=True)
    return path


def _image_ref(header: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return ref
