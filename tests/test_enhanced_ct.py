"""Enhanced CT (one multi-frame file, PS3.3 A.38) built by hand with pydicom from the real
patient's 240 slices: frames stored in reverse order, half of them with a per-frame rescale,
read back voxel for voxel to the plain series, and ingested with the real label.

Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.cohort import ingest
from pipeline.io.dicom_read import read_series
from pipeline.params.loader import IngestParams
from tests.dicom_variants import CASE, labels_dir, real_series_files

pytestmark = pytest.mark.real_data


def _item(**attrs) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def write_enhanced(files: list[Path], path: Path) -> str:
    """Write ``files`` (one series) as one Enhanced CT file, frames in reverse; return its UID."""
    slices = [pydicom.dcmread(f) for f in reversed(files)]
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedCTImageStorage
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, key, first.get(key))
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", "Enhanced", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = first.Rows, first.Columns, len(slices)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[_item(PixelSpacing=first.PixelSpacing, SliceThickness=1.0)],
            PlaneOrientationSequence=[_item(ImageOrientationPatient=first.ImageOrientationPatient)],
            PixelValueTransformationSequence=[
                _item(RescaleIntercept=0, RescaleSlope=1, RescaleType="HU")
            ],
        )
    ]
    frames, per_frame = [], []
    for i, s in enumerate(slices):
        item = _item(PlanePositionSequence=[_item(ImagePositionPatient=s.ImagePositionPatient)])
        stored = s.pixel_array.astype(np.int16)
        if i % 2:  # odd frames: their own Modality LUT overrides the shared one
            stored = stored + 1024
            item.PixelValueTransformationSequence = [
                _item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")
            ]
        per_frame.append(item)
        frames.append(stored)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(frames).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SeriesInstanceUID


@pytest.fixture(scope="module")
def enhanced(real_data_dir, tmp_path_factory):
    files = real_series_files(real_data_dir)
    root = tmp_path_factory.mktemp("enhanced")
    (root / "images" / CASE).mkdir(parents=True)
    uid = write_enhanced(files, root / "images" / CASE / "ENHANCED")
    return root, uid, read_series(files[0].parent)


def test_enhanced_ct_reads_like_the_series(enhanced):
    root, uid, (thin_hu, thin_affine, thin_meta) = enhanced
    hu, affine, meta = read_series(root / "images" / CASE)
    assert meta.series_uid == uid and meta.shape == thin_meta.shape
    assert meta.spacing == pytest.approx(thin_meta.spacing)
    np.testing.assert_allclose(affine, thin_affine, atol=1e-6)
    assert int(np.count_nonzero(hu != thin_hu)) == 0
    # Frames were stored in reverse: frame 240 holds instance 1, the first k.
    assert meta.instance_numbers[0] == 240 and meta.instance_numbers[-1] == 1


def test_enhanced_ct_ingests_with_the_real_label(enhanced, real_data_dir):
    root, uid, _ = enhanced
    out = root / "out"
    (row,) = ingest.run(IngestParams(workers=1), root / "images", labels_dir(real_data_dir), out)
    assert row["status"] == "ok", row
    assert row["series"]["uid"] == uid and row["series"]["slices"] == 240
    assert 98.0 <= row["label_hu_mean"] <= 108.0 and row["label_hu_sd"] < 40.0, row
    assert row["label_voxels"] == 78329
    assert nib.load(out / CASE / "image.nii.gz").shape == (512, 512, 240)
