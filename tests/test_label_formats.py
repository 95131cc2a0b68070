"""Labels as the field's tools write them, ingested for the real patient (``ingest_case``).

Each label is written at test time from the real TCIA patient (Roth et al. 2016,
doi:10.7937/K9/TCIA.2016.tNB1kqBU, CC BY 3.0) by the tool that writes it in practice, and must
land on the voxels of the NIfTI label (``real_case``'s ``truth``, paired by InstanceNumber as
the data README says) with pancreas HU inside:

- a LABELMAP SEG (DICOM Supplement 243) by dcmqi's ``itkimage2segimage --segmentationType
  labelmap --compress deflate`` from the NIfTI label and the CT slices;
- an RTSTRUCT by rt-utils (``RTStructBuilder``, OpenCV's findContours), whose outline of an
  isolated pancreas pixel is one point: that contour is skipped with a warning naming it;
- a NRRD label image, the NIfTI label converted by SimpleITK (``labelNNNN.nrrd``);
- a 3D Slicer segmentation (``.seg.nrrd``): two layers with Slicer's ``Segment<k>_*`` fields,
  written by SimpleITK on the CT grid as SimpleITK reads it from the DICOM slices, the
  pancreas sharing its layer with another segment and overlapping a third.

Each label is built once per module; the series is read once (``series_read_once``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from pipeline.io.label_nrrd import read_nrrd_label
from tests.dicom_label_fixtures import (
    assert_pancreas_hu,
    dice,
    ingest_with,
    real_case,
    series_read_once,
)

PANCREAS = {
    "SegmentLabel": "Pancreas",
    "SegmentDescription": "Pancreas",
    "SegmentAlgorithmType": "MANUAL",
    "SegmentedPropertyCategoryCodeSequence": {
        "CodeValue": "123037004",
        "CodingSchemeDesignator": "SCT",
        "CodeMeaning": "Anatomical Structure",
    },
    "SegmentedPropertyTypeCodeSequence": {
        "CodeValue": "15776009",
        "CodingSchemeDesignator": "SCT",
        "CodeMeaning": "Pancreas",
    },
    "recommendedDisplayRGBValue": [221, 130, 101],
}


def dcmqi_labelmap_seg(real: dict, dest: Path) -> Path:
    """Write the NIfTI label as a LABELMAP SEG of the CT slices with dcmqi; return ``dest``."""
    meta = {
        "ContentCreatorName": "Reader1",
        "ClinicalTrialSeriesID": "Session1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "Pancreas labelmap",
        "SeriesNumber": "300",
        "InstanceNumber": "1",
        "segmentAttributes": [[{"labelID": 1, **PANCREAS}]],
        "ContentLabel": "SEGMENTATION",
        "ContentDescription": "Pancreas",
        "ClinicalTrialCoordinatingCenterName": "test",
    }
    (dest.parent / "dcmqi.json").write_text(json.dumps(meta))
    tool = Path(sys.executable).parent / "itkimage2segimage"  # the dcmqi wheel's console script
    args = [
        "--inputImageList",
        str(real["nifti"]),
        "--inputMetadata",
        str(dest.parent / "dcmqi.json"),
    ]
    args += ["--inputDICOMDirectory", str(real["meta"].files[0].parent), "--outputDICOM", str(dest)]
    args += ["--segmentationType", "labelmap", "--compress", "deflate"]
    subprocess.run([str(tool), *args], check=True, capture_output=True)
    return dest


def rt_utils_rtstruct(real: dict, dest: Path) -> Path:
    """Write the NIfTI label as an RTSTRUCT ROI "Pancreas" with rt-utils; return ``dest``."""
    from rt_utils import RTStructBuilder

    raw = np.asanyarray(nib.load(real["nifti"]).dataobj)
    with warnings.catch_warnings():
        # rt-utils 1.2.7 sets FileDataset.is_little_endian, which pydicom 3 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        rt = RTStructBuilder.create_new(dicom_series_path=str(real["meta"].files[0].parent))
        # rt-utils wants (rows, columns, slices) in its own slice order (by position).
        mask = np.stack([raw[:, :, int(s.InstanceNumber) - 1].T > 0 for s in rt.series_data], -1)
        rt.add_roi(mask=mask, name="Pancreas")
        rt.save(str(dest))
    return dest


def sitk_nrrd_label(real: dict, dest: Path) -> Path:
    """Convert the NIfTI label to a gzip NRRD with SimpleITK; return ``dest``."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(real["nifti"])), str(dest), useCompression=True)
    return dest


def slicer_seg_nrrd(real: dict, dest: Path) -> Path:
    """Write a Slicer-style 2-layer segmentation on the CT grid as SimpleITK reads the DICOM
    series: layer 0 "Body box" (1), overlapping the pancreas; layer 1 "Pancreas" (2) beside
    "Kidney box" (3). Return ``dest``."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(real["meta"].files[0].parent))
    reader.SetFileNames(files)
    ct = reader.Execute()
    raw = np.asanyarray(nib.load(real["nifti"]).dataobj)
    instances = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    pancreas = np.stack([raw[:, :, n - 1].T > 0 for n in instances])  # (z, y, x), sitk's order
    z, y, x = np.nonzero(pancreas)
    layers = np.zeros((*pancreas.shape, 2), dtype=np.uint8)
    layers[z.min() : z.max() + 1, : y.max(), : x.max(), 0] = 1  # over most of the pancreas
    layers[..., 1][pancreas] = 2
    layers[z.min() : z.max() + 1, y.max() + 5 : y.max() + 40, 10:60, 1] = 3
    image = sitk.GetImageFromArray(layers, isVector=True)
    image.CopyInformation(ct)
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for k, (name, value, layer) in enumerate(
        [("Body box", 1, 0), ("Pancreas", 2, 1), ("Kidney box", 3, 1)]
    ):
        fields |= {
            f"Segment{k}_ID": f"Segment_{k + 1}",
            f"Segment{k}_Name": name,
            f"Segment{k}_LabelValue": str(value),
            f"Segment{k}_Layer": str(layer),
            f"Segment{k}_Color": "0.5 0.5 0.5",
        }
    for key, value in fields.items():
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(dest), useCompression=True)
    return dest


@pytest.fixture(scope="module")
def real(real_data_dir, tmp_path_factory):
    """The real patient with each label written once by its tool."""
    data = real_case(real_data_dir, tmp_path_factory.mktemp("label_formats"))
    tmp = data["tmp"]
    data["labelmap"] = dcmqi_labelmap_seg(data, tmp / "labelmap_seg.dcm")
    data["rt_utils"] = rt_utils_rtstruct(data, tmp / "rt_utils.dcm")
    data["nrrd"] = sitk_nrrd_label(data, tmp / "label.nrrd")
    data["seg_nrrd"] = slicer_seg_nrrd(data, tmp / "Segmentation.seg.nrrd")
    with series_read_once(data):
        yield data


def report(name: str, row: dict, score: float) -> None:
    print(
        f"{name}: Dice {score:.4f} vs NIfTI label, HU inside {row['label_hu_mean']:.1f} +/- "
        f"{row['label_hu_sd']:.1f}, {row['label_placement']}"
    )


def assert_lands_exactly(real: dict, key: str, as_name: str, title: str, placement: str) -> None:
    """Ingesting ``real[key]`` as ``as_name`` writes the NIfTI label's voxels, no other, placed
    by ``placement``, with pancreas HU inside and no warning."""
    row, label = ingest_with(real, key, real[key], as_name=as_name)
    assert_pancreas_hu(row)
    report(title, row, dice(label, real["truth"]))
    assert row["label_placement"] == placement and np.array_equal(label, real["truth"])


@pytest.mark.real_data
def test_dcmqi_labelmap_seg_lands_on_the_nifti_voxels(real):
    seg = pydicom.dcmread(real["labelmap"], stop_before_pixels=True)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and seg.SegmentationType == "LABELMAP"
    assert "SegmentIdentificationSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    # highdicom, the reference reader of Supplement 243, finds the same pancreas in it.
    volume = hd.seg.segread(real["labelmap"]).get_volume(combine_segments=True)
    assert np.count_nonzero(volume.array) == np.count_nonzero(real["truth"]) == 78329
    assert_lands_exactly(real, "labelmap", "label0001.dcm", "LABELMAP SEG (dcmqi)", "seg-exact")


@pytest.mark.real_data
def test_rt_utils_rtstruct_skips_its_one_point_contour(real):
    ds = pydicom.dcmread(real["rt_utils"])
    points = [len(c.ContourData) // 3 for c in ds.ROIContourSequence[0].ContourSequence]
    degenerate = [n for n, count in enumerate(points, 1) if count < 3]
    assert degenerate  # the isolated pixel on the pancreas' edge that rt-utils outlines so
    row, label = ingest_with(real, "rt_utils", real["rt_utils"])
    assert_pancreas_hu(row, warned=True)
    score = dice(label, real["truth"])
    report("RTSTRUCT (rt-utils)", row, score)
    assert 0.999 <= score < 1.0 and row["label_placement"] == "rtstruct-polygon"
    for n in degenerate:
        assert f"ROI 'Pancreas' contour {n} ({points[n - 1]} point(s)" in row["warning"]
    assert f"{len(degenerate)} of {len(points)} RTSTRUCT contours enclose no area" in row["warning"]
    strict, _ = ingest_with(real, "rt_utils_strict", real["rt_utils"], strict=True)
    assert strict["status"] == "error" and "enclose no area" in strict["error"]


@pytest.mark.real_data
def test_nrrd_label_image_lands_on_the_nifti_voxels(real):
    assert_lands_exactly(real, "nrrd", "label0001.nrrd", "NRRD label (SimpleITK)", "exact")


@pytest.mark.real_data
def test_slicer_seg_nrrd_pancreas_segment_is_chosen_by_name(real):
    title = "Slicer .seg.nrrd (SimpleITK)"
    assert_lands_exactly(real, "seg_nrrd", "label0001.seg.nrrd", title, "exact")
    kidney, _ = read_nrrd_label(real["seg_nrrd"], "kidney")
    k = np.nonzero(real["truth"].any(axis=(0, 1)))[0]
    # Its own value in the pancreas' layer: the box of slicer_seg_nrrd, no pancreas voxel.
    assert np.count_nonzero(kidney) == (k.max() - k.min() + 1) * 35 * 50
    with pytest.raises(ValueError) as err:
        read_nrrd_label(real["seg_nrrd"], "liver")
    message = str(err.value)
    assert message.startswith(str(real["seg_nrrd"]))
    assert "'Body box', 'Pancreas', 'Kidney box'" in message


# ----------------------------------------------------------------------------- small NRRDs
def tiny(path: Path, space: str, directions, **fields) -> Path:
    data = np.zeros((4, 3, 2), dtype=np.uint8)
    data[1, 2, 1] = 1
    header = {"space": space, "space directions": directions, "space origin": [1.0, 2.0, 3.0]}
    nrrd.write(str(path), data, {**header, **fields})
    return path


def test_nrrd_spaces_give_one_ras_affine(tmp_path):
    lps = np.diag([0.5, 0.5, 2.0])
    _, by_lps = read_nrrd_label(tiny(tmp_path / "a.nrrd", "left-posterior-superior", lps), "")
    ras = np.diag([-0.5, -0.5, 2.0])
    ras_file = tmp_path / "b.nrrd"
    nrrd.write(
        str(ras_file),
        np.zeros((4, 3, 2), np.uint8),
        {"space": "RAS", "space directions": ras, "space origin": [-1.0, -2.0, 3.0]},
    )
    label, by_ras = read_nrrd_label(ras_file, "")
    assert np.allclose(by_lps, by_ras) and label.shape == (4, 3, 2)
    assert np.allclose(by_lps, [[-0.5, 0, 0, -1], [0, -0.5, 0, -2], [0, 0, 2, 3], [0, 0, 0, 1]])


@pytest.mark.parametrize(
    "space, fields, expected",
    [
        ("scanner-xyz", {}, "space 'scanner-xyz'; only"),
        ("LPS", {"Segment0_ID": "S", "Segment0_Name": "Liver"}, "no segment name matches"),
    ],
)
def test_nrrd_without_anatomy_or_pancreas_is_refused_naming_it(tmp_path, space, fields, expected):
    path = tiny(tmp_path / "label0001.nrrd", space, np.eye(3), **fields)
    with pytest.raises(ValueError, match=expected) as err:
        read_nrrd_label(path, "pancreas")
    assert str(err.value).startswith(str(path))
