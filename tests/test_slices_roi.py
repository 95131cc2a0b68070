"""``gvae slices``: the upper-abdomen crop centred from TRAINING masks only, and its resampling.

Every case is cropped around its body centre plus one offset, the mean pancreas offset of the
training cases; these tests pin that offset on known answers, show the crop centres the
pancreas, and show that no val/test mask can move it (no leakage). Volumes are the tiny
synthetic NIfTI phantoms of ``test_slices``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.cli import main as cli_main
from pipeline.cohort.slicing import (
    mask_offset_mm,
    mean_offset_mm,
    resample_crop,
    shift_mm,
    slice_case,
)
from pipeline.cohort.write_slices import run
from pipeline.io.shards import load_slices
from pipeline.params.cohort import SlicesParams, SplitParams
from tests.test_slices import TINY, five_cases, phantom, write_volumes


def test_default_crop_is_200_mm_centred_from_training_masks():
    params = SlicesParams()
    assert (params.fov_mm, params.centre, params.source) == (200.0, "train_masks", "volumes")
    with pytest.raises(ValidationError, match="centre"):
        SlicesParams(centre="pancreas")


def test_mask_offset_and_mean_offset_known_answers():
    mask = np.zeros((3, 10, 20), bool)
    mask[1, 2:4, 14:16] = True  # centroid (2.5, 14.5)
    assert mask_offset_mm(mask, (4.5, 9.5), (0.5, 2.0)) == pytest.approx((-1.0, 10.0))
    assert mask_offset_mm(np.zeros((2, 4, 4)), (1.5, 1.5), (1.0, 1.0)) is None
    offset, used = mean_offset_mm({"b": (-1.0, 10.0), "a": (3.0, 0.0), "c": None})
    assert offset == pytest.approx((1.0, 5.0)) and used == ["a", "b"]
    with pytest.raises(ValueError, match="train_masks"):
        mean_offset_mm({"a": None})
    assert shift_mm((4.5, 9.5), (-1.0, 10.0), (0.5, 2.0)) == pytest.approx((2.5, 14.5))


def test_slice_case_offset_moves_the_crop():
    # Shifting the crop 12.5 mm anterior moves the body 12.5 mm = 4 output pixels down.
    hu, label, affine = phantom(radius_mm=25, pancreas_slices=[])
    rows = [
        np.nonzero(slice_case(hu, label, affine, TINY, "c", offset_mm=o).image[0, 0] > -0.9)[0]
        for o in ((0.0, 0.0), (-12.5, 0.0))
    ]
    assert rows[1].mean() - rows[0].mean() == pytest.approx(4.0, abs=0.3)


# Box offsets (x to the patient's left, y anterior) in mm: train cases vote, val/test must not.
BOXES = {
    "PANCREAS_0001": (10.0, 15.0),
    "PANCREAS_0002": (0.0, 10.0),
    "PANCREAS_0003": (5.0, 5.0),
    "PANCREAS_0004": (5.0, 10.0),  # val: exactly at the train mean
    "PANCREAS_0005": (-10.0, -15.0),  # test
}
ROI_SPLIT = SplitParams(
    cases={"train": list(BOXES)[:3], "val": ["PANCREAS_0004"], "test": ["PANCREAS_0005"]}
)
ROI_PARAMS = SlicesParams(fov_mm=60.0, size=32, negative_fraction=0.0, split=ROI_SPLIT)


def _roi_cases(test_box=(-10.0, -15.0)):
    boxes = {**BOXES, "PANCREAS_0005": test_box}
    return {
        c: phantom(shape=(96, 96, 6), box_mm=b, pancreas_slices=[2, 3]) for c, b in boxes.items()
    }


def test_roi_offset_comes_from_training_masks_and_centres_the_pancreas(tmp_path):
    out = tmp_path / "slices"
    run(ROI_PARAMS, write_volumes(tmp_path / "v", _roi_cases()), out)
    roi = json.loads((out / "index.json").read_text())["roi"]
    assert roi["centre"] == "train_masks" and roi["from_cases"] == list(BOXES)[:3]
    # Mean box offset (5 mm left, 10 mm anterior) on the display grid: rows A->P, cols R->L.
    assert roi["offset_mm"] == pytest.approx([-10.0, 5.0], abs=0.5)
    _, masks, meta = load_slices(out, "val")
    rr, cc = np.nonzero(masks[:, 0].any(axis=0))
    assert abs(rr.mean() - 15.5) < 1.0 and abs(cc.mean() - 15.5) < 1.0
    # With centre: body the same val box sits 10 mm / 1.875 mm = 5.3 px above the centre.
    body = ROI_PARAMS.model_copy(update={"centre": "body"})
    run(body, tmp_path / "v", tmp_path / "body")
    assert json.loads((tmp_path / "body" / "index.json").read_text())["roi"]["offset_mm"] == [0, 0]
    rr_body = np.nonzero(load_slices(tmp_path / "body", "val")[1][:, 0].any(axis=0))[0]
    assert rr_body.mean() - 15.5 == pytest.approx(-10.0 / 1.875, abs=1.0)


def test_roi_never_reads_a_test_mask(tmp_path):
    # Moving the test case's pancreas changes its own output, nothing else: no leakage.
    outs = []
    for i, test_box in enumerate([(-10.0, -15.0), (15.0, 20.0)]):
        run(ROI_PARAMS, write_volumes(tmp_path / f"v{i}", _roi_cases(test_box)), tmp_path / f"o{i}")
        outs.append(tmp_path / f"o{i}")
    index = [json.loads((o / "index.json").read_text()) for o in outs]
    assert index[0]["roi"] == index[1]["roi"]
    for split in ("train", "val"):
        a, b = load_slices(outs[0], split), load_slices(outs[1], split)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(load_slices(outs[0], "test")[1], load_slices(outs[1], "test")[1])


def test_cli_input_option_and_empty_train_split(tmp_path, capsys):
    volumes = write_volumes(tmp_path / "volumes", dict(list(five_cases().items())[:4]))
    params = tmp_path / "p.yaml"
    params.write_text("slices: {size: 32, split: {train: 0, val: 0.5, test: 0.5}}\n")
    argv = [
        "slices",
        "--params",
        str(params),
        "--input",
        str(volumes),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "p.yaml: slices.split" in err and "no patient in train" in err
    assert not (tmp_path / "o").exists()
    params.write_text("slices: {size: 32, centre: body, split: {train: 0, val: 0.5, test: 0.5}}\n")
    assert cli_main(argv) == 0  # the body-centred crop needs no training case
    assert json.loads((tmp_path / "o" / "index.json").read_text())["splits"]["train"]["slices"] == 0


@pytest.mark.parametrize(
    "centre, pixel_mm", [((60.0, 50.0), 3.0), ((5.0, 110.0), 2.2), ((-40.0, 20.0), 4.0)]
)
def test_resample_crop_filters_only_its_window_with_identical_numbers(centre, pixel_mm):
    # Reference: the Gaussian over the whole slice, then the one interpolation. Filtering just
    # the window the output can see must give the same numbers (to float32 rounding of the
    # sample positions), near the edges and off them.
    from scipy import ndimage

    x = np.random.default_rng(0).normal(0, 100, (2, 140, 120)).astype(np.float32)
    spacing, size = (0.7, 0.9), 16
    factors = np.array([pixel_mm / spacing[0], pixel_mm / spacing[1]])
    blurred = ndimage.gaussian_filter(x, (0, *((factors - 1) / 2)), mode="nearest")
    start = np.array(centre) - (size - 1) / 2 * factors
    expected = ndimage.affine_transform(
        blurred, (1, *factors), (0, *start), (2, size, size), order=1, cval=-1000, prefilter=False
    )
    got = resample_crop(x, spacing, centre, pixel_mm, size, fill=-1000.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
    assert (got == -1000).any() == (start.min() < 0)
