"""DICOM SEG and RTSTRUCT labels (pipeline/io/label_dicom.py) through ``ingest_case``.

Both are written at test time from the real TCIA patient (Roth et al. 2016,
doi:10.7937/K9/TCIA.2016.tNB1kqBU, CC BY 3.0): the SEG with highdicom from the real slices the
pancreas touches, the RTSTRUCT from the label's per-slice outlines in patient mm. The reference
mask is the NIfTI label by the data README's own pairing (``label[x, y, k]`` is the slice with
InstanceNumber k + 1), independent of the geometry code under test. The series is read once per
module; ``ingest_case`` still runs whole (label lookup, hash, placement, checks, writes), and the
label-series-in-the-case-folder test reads it for real, through the series choice. Small
synthetic grids check hole filling, the contour rejections and SEG frame stacking with gaps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.cohort import ingest
from pipeline.cohort.sources import tcia
from pipeline.io import dicom_read
from pipeline.io.dicom_geometry import LPS_TO_RAS
from pipeline.io.label_dicom import CtGrid, ct_grid, fill_contours, read_dicom_label, stack_frames
from pipeline.io.label_geometry import place_label
from pipeline.params.loader import IngestParams
from tests.dicom_label_fixtures import (
    CASE,
    assert_pancreas_hu,
    dice,
    ingest_with,
    real_case,
    series_read_once,
    write_rtstruct,
    write_seg,
)

PARAMS = IngestParams(workers=1)


@pytest.fixture(scope="module")
def real(real_data_dir, tmp_path_factory):
    """The real series (read once), the reference mask on its grid, a SEG and an RTSTRUCT."""
    data = real_case(real_data_dir, tmp_path_factory.mktemp("dicom_labels"))
    truth = data["truth"]
    box = np.zeros_like(truth)
    box[200:260, 200:260, 100] = 1  # a second ROI, for choosing by name
    data["seg"] = write_seg(data["tmp"] / "seg.dcm", list(data["meta"].files), truth)
    data["rtstruct"] = rtstruct(data, "rt", {"Pancreas": truth, "BODY": box})
    with series_read_once(data):
        yield data


def rtstruct(real: dict, name: str, rois: dict[str, np.ndarray], **kwargs) -> Path:
    """Write an RTSTRUCT of ``rois`` on the real series as ``<tmp>/<name>.dcm``."""
    files = list(real["meta"].files)
    return write_rtstruct(real["tmp"] / f"{name}.dcm", files, real["affine"], rois, **kwargs)


# ----------------------------------------------------------------------------- SEG
@pytest.mark.real_data
def test_seg_lands_on_the_nifti_voxels(real):
    seg = pydicom.dcmread(real["seg"], stop_before_pixels=True)
    assert int(seg.NumberOfFrames) == 71  # only the slices the pancreas touches
    row, label = ingest_with(real, "seg", real["seg"])
    assert_pancreas_hu(row)
    assert row["label_placement"] == "seg-exact" and row["label_voxels"] == 78329
    assert np.count_nonzero(label != real["truth"]) == 0
    _, by_nifti = ingest_with(real, "nifti", real["nifti"], as_name="label0001.nii.gz")
    assert np.count_nonzero(label != by_nifti) == 0  # the same voxels as the NIfTI path


@pytest.mark.real_data
@pytest.mark.parametrize(
    "what, expected", [("frame", "FrameOfReferenceUID"), ("series", "references series")]
)
def test_seg_of_another_frame_or_series_is_rejected(real, what, expected):
    seg = pydicom.dcmread(real["seg"])
    if what == "frame":
        seg.FrameOfReferenceUID = generate_uid()
    else:
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
    bad = real["tmp"] / f"seg_{what}.dcm"
    seg.save_as(bad)
    row, _ = ingest_with(real, f"seg_{what}", bad)
    assert row["status"] == "error" and expected in row["error"], row
    assert row["error"].startswith(str(real["tmp"] / f"seg_{what}" / "labels" / "label0001.dcm"))
    assert not (real["tmp"] / f"seg_{what}" / "out" / CASE).exists()


# ----------------------------------------------------------------------------- RTSTRUCT
@pytest.mark.real_data
def test_rtstruct_outlines_fill_the_pancreas(real):
    row, label = ingest_with(real, "rtstruct", real["rtstruct"])
    assert_pancreas_hu(row)
    assert row["label_placement"] == "rtstruct-polygon"
    assert dice(label, real["truth"]) > 0.9
    # Outlines half-way between pixel centres hold exactly the mask's pixel centres, and
    # skimage.draw.polygon fills by pixel centre: this round trip is exact (Dice 1.0).
    assert np.count_nonzero(label != real["truth"]) == 0


@pytest.mark.real_data
def test_coarser_rtstruct_outlines_still_fill_the_pancreas(real):
    coarse = rtstruct(real, "rt_coarse", {"Pancreas": real["truth"]}, every=4)
    row, label = ingest_with(real, "rt_coarse", coarse)
    assert_pancreas_hu(row)
    score = dice(label, real["truth"])
    print(f"RTSTRUCT (every 4th outline point) Dice vs NIfTI label: {score:.4f}")
    assert 0.9 < score < 1.0


@pytest.mark.real_data
def test_rtstruct_roi_is_chosen_by_name(real):
    grid = ct_grid(real["affine"], real["meta"])
    tol = (PARAMS.label_grid_tolerance_mm, PARAMS.label_outside_tolerance_mm)
    body, placement, warnings = read_dicom_label(real["rtstruct"], grid, "^body$", *tol)
    assert placement == "rtstruct-polygon" and np.count_nonzero(body) == 60 * 60
    assert warnings == ()
    with pytest.raises(ValueError) as err:
        read_dicom_label(real["rtstruct"], grid, "kidney", *tol)
    message = str(err.value)
    assert message.startswith(str(real["rtstruct"])) and "'Pancreas', 'BODY'" in message


@pytest.mark.real_data
def test_rtstruct_in_another_frame_of_reference_is_rejected(real):
    # One empty slice is enough: the frame of reference is checked before any contour.
    mask = {"Pancreas": real["truth"][:, :, :1]}
    bad = rtstruct(real, "rt_frame", mask, frame_of_reference_uid=generate_uid())
    row, _ = ingest_with(real, "rt_frame", bad)
    assert row["status"] == "error" and "FrameOfReferenceUID" in row["error"], row
    assert str(real["tmp"] / "rt_frame" / "labels" / "label0001.dcm") in row["error"]


# ----------------------------------------------------------------------------- layouts
@pytest.mark.real_data
def test_case_named_dcm_in_the_labels_folder(real):
    row, label = ingest_with(real, "case_named", real["seg"], as_name=f"{CASE}.dcm")
    assert row["status"] == "ok" and np.count_nonzero(label != real["truth"]) == 0, row


@pytest.mark.real_data
def test_label_series_inside_the_case_folder(real):
    case_dir = real["tmp"] / "inside" / CASE
    case_dir.mkdir(parents=True)
    for path in real["meta"].files:  # the real slices, linked, beside an exported SEG series
        os.symlink(path, case_dir / path.name)
    os.symlink(real["seg"], case_dir / "SEG-0001.dcm")
    labels = real["tmp"] / "inside" / "labels"
    labels.mkdir()
    assert tcia.label_path_for(CASE, labels, case_dir) == case_dir / "SEG-0001.dcm"
    with pytest.MonkeyPatch.context() as patch:
        # The real read this time: the series choice must pass over the SEG series beside the CT.
        patch.setattr(tcia, "read_series", dicom_read.read_series)
        row = ingest.ingest_case(case_dir, labels, real["tmp"] / "inside" / "out", PARAMS)
    assert_pancreas_hu(row)
    assert row["label_placement"] == "seg-exact" and row["label_voxels"] == 78329
    assert [s["reason"] for s in row["skipped_series"]] == ["Modality SEG, not CT"], row


def test_two_label_files_are_an_error_naming_both(tmp_path):
    (tmp_path / "label0001.nii.gz").write_bytes(b"")
    (tmp_path / "label0001.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match="2 label files") as err:
        tcia.label_path_for(CASE, tmp_path)
    assert str(tmp_path / "label0001.dcm") in str(err.value)
    assert "label0001.nii.gz" in str(err.value)


def test_roi_pattern_must_be_a_regex():
    with pytest.raises(ValueError, match="roi_pattern"):
        IngestParams(roi_pattern="(pancreas")


# ----------------------------------------------------------------------------- synthetic grids
SMALL = CtGrid((20, 16, 6), np.diag([-0.5, -0.5, 2.0, 1.0]), "1.2.3", "1.2.3.4")


def closed(points_ijk: list[tuple[float, float, float]]) -> Dataset:
    """A CLOSED_PLANAR contour through CT voxel indices of ``SMALL``, in patient LPS mm."""
    ras = np.column_stack([points_ijk, np.ones(len(points_ijk))]) @ SMALL.affine.T
    item = Dataset()
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.ContourData = list((ras[:, :3] * [-1.0, -1.0, 1.0]).ravel())
    return item


def square(lo: float, hi: float, k: float) -> Dataset:
    return closed([(lo, lo, k), (hi, lo, k), (hi, hi, k), (lo, hi, k)])


def test_inner_contour_cuts_a_hole():
    out, skipped = fill_contours([square(1.5, 9.5, 2), square(3.5, 6.5, 2)], SMALL, 0.1, 1.0)
    assert skipped == [] and out.shape == SMALL.shape and out.flags.f_contiguous
    assert np.count_nonzero(out) == 8 * 8 - 3 * 3 and not out[5, 5, 2] and out[2, 2, 2]
    assert np.count_nonzero(out[:, :, [0, 1, 3, 4, 5]]) == 0


@pytest.mark.parametrize(
    "contour, expected",
    [
        (square(1.5, 4.5, 2.3), "off the CT slice planes"),
        (square(1.5, 30.0, 2), "reaches 7.5 mm beyond the CT volume along CT axis j"),
    ],
)
def test_contour_off_a_slice_or_outside_is_rejected(contour, expected):
    with pytest.raises(ValueError, match=expected):
        fill_contours([contour], SMALL, 0.1, 1.0)


def test_open_contour_is_rejected():
    contour = square(1.5, 4.5, 2)
    contour.ContourGeometricType = "OPEN_PLANAR"
    with pytest.raises(ValueError, match="only CLOSED_PLANAR"):
        fill_contours([contour], SMALL, 0.1, 1.0)


def test_frames_with_gaps_stack_on_the_ct_lattice():
    """SEG frames exist only where there is label: k 1 and 4 give a 4-slice stack, 2-3 empty,
    which place_label copies exactly onto CT slices 1..4."""
    masks = np.zeros((2, 16, 20), dtype=bool)  # (frames, rows, cols)
    masks[0, 2:5, 3:6] = masks[1, 8:9, 10:12] = True
    lps = LPS_TO_RAS @ SMALL.affine
    positions = np.array([lps[:3, :3] @ [0, 0, k] + lps[:3, 3] for k in (1, 4)])
    orientation = np.array([1.0, 0, 0, 0, 1, 0])  # LPS row/column cosines of SMALL
    vol, affine = stack_frames(masks, positions, orientation, np.array([0.5, 0.5]), SMALL, 0.1)
    assert vol.shape == (20, 16, 4) and not vol[:, :, 1:3].any()
    label, method = place_label(vol, affine, SMALL.shape, SMALL.affine, 0.1, 1.0)
    assert method == "exact"
    assert np.array_equal(label[:, :, 1], masks[0].T) and np.array_equal(label[:, :, 4], masks[1].T)
    assert np.count_nonzero(label) == 3 * 3 + 2


def test_contours_enclosing_no_area_are_skipped_by_name():
    """rt-utils outlines an isolated pixel with one point and a one-pixel line with two; a
    polygon through collinear points encloses nothing either. Each is skipped and named."""
    point = closed([(4, 4, 3)])
    line = closed([(4, 4, 3), (6, 4, 3)])
    collinear = closed([(4, 4, 3), (5, 5, 3), (6, 6, 3)])
    names = ["ROI 'P' contour 1", "ROI 'P' contour 2", "ROI 'P' contour 3", "ROI 'P' contour 4"]
    out, skipped = fill_contours(
        [square(1.5, 9.5, 2), point, line, collinear], SMALL, 0.1, 1.0, names
    )
    assert np.count_nonzero(out) == 8 * 8 and not out[:, :, 3].any()
    assert skipped == [
        "ROI 'P' contour 2 (1 point(s) at z = 6 mm, CT slice 3)",
        "ROI 'P' contour 3 (2 point(s) at z = 6 mm, CT slice 3)",
        "ROI 'P' contour 4 (3 point(s) at z = 6 mm, CT slice 3)",
    ]


def test_contour_data_that_are_not_triplets_are_rejected():
    contour = square(1.5, 4.5, 2)
    contour.ContourData = contour.ContourData[:-1]
    with pytest.raises(ValueError, match="contour 1 has 11 ContourData values, not"):
        fill_contours([contour], SMALL, 0.1, 1.0)


def test_missing_label_names_every_name_looked_for(tmp_path):
    with pytest.raises(ValueError) as err:
        tcia.label_path_for(CASE, tmp_path / "labels", tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'labels' / 'label0001.nii.gz'}: label file not found")
    for name in ("label0001.seg.nrrd", "label0001.nrrd", "label0001.dcm", f"{CASE}.nii.gz"):
        assert name in message
    assert f"SEG / RTSTRUCT file below {tmp_path}" in message
