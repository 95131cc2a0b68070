"""Exported SEGs read back by the field's reference readers, not by the code that wrote them.

- dcmqi's ``segimage2itkimage`` (QIICR; the SEG reader behind 3D Slicer) converts every SEG of
  an export to NRRD; SimpleITK reads it and the mask equals the generated one pixel for pixel,
  on the image's own grid (origin, spacing, directions).
- highdicom's ``segread`` gives every SEG's frame by its source image's SOP Instance UID, equal
  to the generated mask, and the SEG's volume geometry is its image's.
- No reader builds a volume across samples: highdicom refuses the image series as one volume
  (no shared Frame of Reference), and every image sits at one position (no extent to stack).
- dciodvfy stays as clean as for any export, empty SEG frame included.

The masks are chosen so that a flip, a transpose or a shift would show: an L in one corner, one
pixel in the opposite corner, a triangle, an empty mask (a negative sample) and a blob.
"""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml

from pipeline.cli import main

from .conftest import REPO
from .ct_fixtures import toy_pairs
from .export_fixtures import dciodvfy, dcmqi_read_seg, write_synthetic_set
from .test_export import DCIODVFY_EXPECTED

S = 32
PIXEL_MM = 6.25


def _masks() -> np.ndarray:
    """(5, 1, S, S) uint8: an L top left, one pixel top right, empty, a triangle, a blob."""
    masks = np.zeros((5, 1, S, S), np.uint8)
    masks[0, 0, 2:10, 3:6] = 1
    masks[0, 0, 8:10, 3:13] = 1
    masks[1, 0, 0, S - 1] = 1
    r, c = np.mgrid[:S, :S]
    masks[3, 0] = (r >= 22) & (c <= r - 22)
    masks[4] = toy_pairs(1, S, seed=3)[1][0]
    return masks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``gvae export`` of the five masks (empty masks kept as negatives), files and receipt."""
    root = tmp_path_factory.mktemp("readers")
    masks = _masks()
    images = toy_pairs(len(masks), S, seed=7)[0]
    syn = write_synthetic_set(root / "syn", images, masks, pixel_mm=PIXEL_MM)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["export"]["plausibility"]["empty"] = "keep"
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = root / "out"
    # No training slices: the near-copy gate cannot run, and is overridden to let the set out.
    args = ["--synthetic", str(syn), "--out", str(out), "--n", str(len(masks))]
    assert main(["export", *args, "--params", str(params), "--allow-near-copies"]) == 0
    receipt = json.loads((out / "receipt.json").read_text())
    rows = receipt["instances"]
    assert [r["draw"] for r in rows if r["kind"] == "segmentation"] == list(range(len(masks)))
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    pairs = [
        (out / by_uid[r["references"]]["file"], out / r["file"], masks[r["draw"], 0])
        for r in rows
        if r["kind"] == "segmentation"
    ]
    return {"out": out, "rows": rows, "pairs": pairs}


def test_dcmqi_reads_every_seg_to_the_exact_mask_on_its_image(exported, tmp_path):
    import SimpleITK as sitk

    for k, (image_path, seg_path, mask) in enumerate(exported["pairs"]):
        image = pydicom.dcmread(image_path)
        files = dcmqi_read_seg(seg_path, tmp_path / f"seg{k}")
        assert len(files) == 1, (seg_path.name, files)  # one segment, one label image
        label = sitk.ReadImage(str(files[0]))
        # ITK's (x, y, z) = DICOM (column, row, frame): the array is (frame, row, column).
        array = sitk.GetArrayFromImage(label)
        assert array.shape == (1, S, S), seg_path.name
        np.testing.assert_array_equal(array[0], mask, err_msg=seg_path.name)
        # The label lies on its image: the image's origin, spacing and directions.
        origin = [float(v) for v in image.ImagePositionPatient]
        np.testing.assert_allclose(label.GetOrigin(), origin)
        np.testing.assert_allclose(label.GetSpacing(), [PIXEL_MM] * 3)
        np.testing.assert_allclose(label.GetDirection(), np.eye(3).ravel(), atol=1e-9)


def test_highdicom_reads_every_seg_to_the_exact_mask_on_its_image(exported):
    for image_path, seg_path, mask in exported["pairs"]:
        image = pydicom.dcmread(image_path)
        seg = hd.seg.segread(seg_path)
        # Frames by the SOP Instance UID of the image they segment, as viewers match them.
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[image.SOPInstanceUID], segment_numbers=[1]
        )
        assert pixels.shape == (1, S, S, 1), seg_path.name
        np.testing.assert_array_equal(pixels[0, :, :, 0], mask, err_msg=seg_path.name)
        # And by geometry: the SEG's volume is the image's plane, in the image's frame. Its
        # slice axis is the image's normal; the length of that axis for a single image is a
        # reader's default (highdicom's image reader takes 1 mm, the SEG says the thickness).
        volume = seg.get_volume()
        assert volume.frame_of_reference_uid == image.FrameOfReferenceUID
        plane = hd.imread(image_path).get_volume().affine
        np.testing.assert_allclose(volume.affine[:, 1:], plane[:, 1:])
        np.testing.assert_allclose(volume.affine[:3, 0] / PIXEL_MM, plane[:3, 0], atol=1e-9)
        np.testing.assert_array_equal(np.squeeze(volume.array), mask, err_msg=seg_path.name)


def test_no_reader_builds_a_volume_across_samples(exported):
    images = [pydicom.dcmread(image_path) for image_path, _, _ in exported["pairs"]]
    segs = [pydicom.dcmread(seg_path) for _, seg_path, _ in exported["pairs"]]
    # highdicom builds a volume from a series only within one Frame of Reference.
    with pytest.raises(ValueError, match="do not share a frame of reference"):
        hd.get_volume_from_series(images)
    assert len({ds.FrameOfReferenceUID for ds in images}) == len(images)
    # A viewer that stacks by position alone (OHIF's reconstructability check) finds every
    # slice at one place: no extent between them, nothing to reconstruct or measure across.
    assert len({tuple(ds.ImagePositionPatient) for ds in images}) == 1
    assert len({tuple(ds.ImageOrientationPatient) for ds in images}) == 1
    # Every SEG is alone in its series (OHIF lists and loads a SEG series as one entry) and in
    # its image's Frame of Reference.
    assert len({ds.SeriesInstanceUID for ds in segs}) == len(segs)
    for image, seg in zip(images, segs, strict=True):
        assert seg.FrameOfReferenceUID == image.FrameOfReferenceUID


def test_dciodvfy_every_file(exported):
    for row in exported["rows"]:
        iod, messages = dciodvfy(exported["out"] / row["file"])
        assert iod == ("Segmentation" if row["kind"] == "segmentation" else "CTImage"), row["file"]
        assert messages == DCIODVFY_EXPECTED, row["file"]
