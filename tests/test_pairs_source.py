"""``slices.source: pairs``: 2D image/mask files -> the same shards as the volumes source.

Synthetic pairs (tiny PNG/JPEG files on ``tmp_path``) pin the known answers and every bad input;
the real pairs (395 Pancreas-CT slices of 43 patients, Roth et al. 2016,
doi:10.7937/K9/TCIA.2016.tNB1kqBU, CC BY 3.0) pin counts, HU inside the pancreas, orientation
and the training-mask ROI on real anatomy.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from pipeline.cli import main as cli_main
from pipeline.cohort.pairs import find_pairs, read_pair
from pipeline.cohort.slicing import to_display
from pipeline.cohort.split import SPLITS, SplitError
from pipeline.cohort.write_slices import run
from pipeline.errors import StageError
from pipeline.io.shards import load_slices
from pipeline.params.cohort import PairsParams, SlicesParams, SplitParams

N = 64  # stored matrix of the synthetic pairs; 1 mm pixels
CASES = [f"P_{i}" for i in range(1, 6)]
SPLIT = SplitParams(cases={"train": CASES[:3], "val": CASES[3:4], "test": CASES[4:]})
# 32 mm crop on 16 px: 2 mm pixels; pairs stored posterior -> anterior, like TCIA pixel_array.
PARAMS = SlicesParams(
    source="pairs", pairs={"pixel_mm": 1.0}, fov_mm=32.0, size=16, split=SPLIT, shard_size=4
)


def stored_pair(box_rc=(20, 40), value=100, marker=True):
    """A stored (image, mask) pair: 40 HU body, a 4x4 pancreas box of ``value`` at ``box_rc``
    (stored rows, so row 0 is posterior) and a 255 "spine" marker in the posterior rows."""
    image = np.zeros((N, N), np.uint8)
    image[8:56, 8:56] = 40
    r, c = box_rc
    image[r : r + 4, c : c + 4] = value
    if marker:
        image[10:14, 30:34] = 255
    mask = np.zeros((N, N), np.uint8)
    mask[r : r + 4, c : c + 4] = 255
    return image, mask


def write_pair(folder, name, image, mask, suffix=".png"):
    """Write ``images/<name>`` (RGB, three equal channels) and ``masks/<name>``."""
    for sub, arr in (("images", np.stack([image] * 3, axis=-1)), ("masks", mask)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if arr is not None:
            Image.fromarray(arr).save(folder / sub / f"{name}{suffix}")


def write_cohort(folder, boxes=None, **kwargs):
    """Two slices (numbers 7 and 12) per case of ``CASES``; ``boxes`` overrides per case."""
    for cid in CASES:
        for k in (7, 12):
            write_pair(
                folder, f"{cid}-{k}", *stored_pair(**{**kwargs, **(boxes or {}).get(cid, {})})
            )
    return folder


def index_of(out):
    return json.loads((out / "index.json").read_text())


# ----------------------------------------------------------------------------- params
def test_pairs_params_defaults_and_validation():
    p = SlicesParams().pairs
    assert (p.pixel_mm, p.intensity.scale, p.intensity.offset) == (0.8, 1.0, 0.0)
    assert (p.rows, p.mask_threshold) == ("posterior_to_anterior", 127)
    with pytest.raises(ValidationError, match="named group"):
        PairsParams(pattern=r"^(?P<case>.+)$")
    with pytest.raises(ValidationError, match="extra"):
        SlicesParams(pairs={"pixel_size": 0.8})
    with pytest.raises(ValidationError, match="scale"):
        PairsParams(intensity={"scale": 0})


# ----------------------------------------------------------------------------- known answers
def test_pairs_become_display_slices_with_known_values(tmp_path):
    out = tmp_path / "slices"
    summary = run(PARAMS, write_cohort(tmp_path / "pairs"), out)
    assert summary["cases"] == {"train": 3, "val": 1, "test": 1}
    index = index_of(out)
    assert index["input"]["source"] == "pairs" and index["negative_fraction"] is None
    assert "negative_fraction does not apply" in index["input"]["selection"]
    assert "file name" in index["axes"]["slice_index"] and index["roi"]["from_cases"] == CASES[:3]
    images, masks, meta = load_slices(out, "train")
    assert images.shape == (6, 1, 16, 16) and masks.dtype == np.uint8
    assert meta["case_id"].tolist() == ["P_1", "P_1", "P_2", "P_2", "P_3", "P_3"]
    assert meta["slice_index"].tolist() == [7, 12] * 3  # the <slice> number of each name
    # The stored box (rows 20-23, cols 40-43) is the crop's centre after the ROI shift; the
    # stored 40 HU body windows to 0; nothing is darker than stored 0 (air, fat): -0.2.
    centre = images[0, 0, 6:10, 6:10]
    assert centre.max() == pytest.approx((100 - 40) / 200, abs=0.05)
    assert images.min() >= -0.2 - 1e-6 and np.median(images) == pytest.approx(0.0, abs=1e-6)
    # Orientation: the marker stored in the top (posterior) rows ends in the bottom half.
    assert np.argwhere(images[0, 0] > 0.6)[:, 0].min() >= 8


def test_rows_setting_and_intensity_map(tmp_path):
    write_cohort(tmp_path / "pairs")
    p = PARAMS.model_copy(
        update={
            "pairs": PairsParams(
                pixel_mm=1.0, rows="anterior_to_posterior", intensity={"scale": 2, "offset": -100}
            ),
            "centre": "body",
            "fov_mm": 64.0,
        }
    )
    run(p, tmp_path / "pairs", tmp_path / "out")
    image = load_slices(tmp_path / "out", "train")[0][0, 0]
    # Stored 40 -> -20 HU -> -0.3; stored 0 -> -100 HU -> -0.7 (also the padding value).
    assert image[8, 8] == pytest.approx(-0.3, abs=1e-5) and image.min() == pytest.approx(-0.7)
    # Rows kept as stored: the marker (stored rows 10-13 of 64, 4 mm pixels) stays on top.
    row, col = np.unravel_index(np.argmax(image), image.shape)
    assert row in (2, 3) and col in (7, 8), (row, col)  # not row 12: no flip


def test_roi_offset_is_the_training_mask_offset_in_mm(tmp_path):
    # Box centre at stored (21.5, 41.5) -> display row 63 - 21.5 = 41.5; image centre 31.5.
    params = PARAMS.model_copy(update={"pairs": PairsParams(pixel_mm=0.5)})
    boxes = {"P_1": {"box_rc": (20, 40)}, "P_2": {"box_rc": (30, 30)}, "P_3": {"box_rc": (20, 30)}}
    run(params, write_cohort(tmp_path / "pairs", boxes), tmp_path / "out")
    roi = index_of(tmp_path / "out")["roi"]
    # Display offsets (rows, cols) of the three train boxes: (10, 10), (0, 0), (10, 0) px.
    assert roi["offset_mm"] == pytest.approx([20 / 3 * 0.5, 10 / 3 * 0.5])
    assert roi["from_cases"] == CASES[:3] and roi["body_centre"] == "image centre"


def test_roi_never_reads_a_test_mask(tmp_path):
    outs = []
    for i, box in enumerate([(20, 40), (44, 12)]):
        folder = write_cohort(tmp_path / f"pairs{i}", {"P_5": {"box_rc": box}})
        run(PARAMS, folder, tmp_path / f"out{i}")
        outs.append(tmp_path / f"out{i}")
    assert index_of(outs[0])["roi"] == index_of(outs[1])["roi"]
    for split in ("train", "val"):
        a, b = load_slices(outs[0], split), load_slices(outs[1], split)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(load_slices(outs[0], "test")[1], load_slices(outs[1], "test")[1])


def test_fraction_split_keeps_patients_together_and_dark_mask_is_kept(tmp_path):
    folder = write_cohort(tmp_path / "pairs")
    write_pair(folder, "P_2-30", stored_pair()[0], np.zeros((N, N), np.uint8))  # all dark: kept
    params = PARAMS.model_copy(update={"split": SplitParams(seed=1)})
    summary = run(params, folder, tmp_path / "out")
    index = index_of(tmp_path / "out")
    assert sum(summary["slices"].values()) == 11 and summary["negative"] == 1
    ids = {s: set(load_slices(tmp_path / "out", s)[2]["case_id"].tolist()) for s in SPLITS}
    assert sorted(c for s in SPLITS for c in ids[s]) == CASES
    assert index["cases"]["P_2"]["n_slices"] == 3


# ----------------------------------------------------------------------------- bad input
def _bad_unpaired(folder):
    image, _ = stored_pair()
    write_pair(folder, "P_9-3", image, None)
    return "images/P_9-3.png"


def _bad_unpaired_mask(folder):
    (folder / "masks" / "P_1-7.png").rename(folder / "masks" / "P_1-8.png")
    return "masks/P_1-8.png"


def _bad_name(folder):
    write_pair(folder, "scan_final", *stored_pair())
    return "images/scan_final.png"


def _bad_jpeg(folder):
    write_pair(folder, "P_1-99", *stored_pair(), suffix=".jpg")
    path = folder / "images" / "P_1-99.jpg"
    path.write_bytes(path.read_bytes()[:300])  # truncated in the middle of the scan
    return "images/P_1-99.jpg"


def _bad_shape(folder):
    image, mask = stored_pair()
    write_pair(folder, "P_2-5", image, mask[:32])
    return "masks/P_2-5.png"


def _bad_grey(folder):
    image, _ = stored_pair()
    write_pair(folder, "P_3-5", image, np.full((N, N), 128, np.uint8))
    return "masks/P_3-5.png"


@pytest.mark.parametrize(
    "spoil, message",
    [
        (_bad_unpaired, "unpaired"),
        (_bad_unpaired_mask, "unpaired"),
        (_bad_name, "not matching slices.pairs.pattern"),
        (_bad_jpeg, "corrupt"),
        (_bad_shape, "differ"),  # from its image, or (read first) from the case's other masks
        (_bad_grey, "not a binary mask"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_file(tmp_path, spoil, message):
    folder = write_cohort(tmp_path / "pairs")
    name = spoil(folder)
    with pytest.raises(StageError, match=message) as err:
        run(PARAMS.model_copy(update={"split": SplitParams()}), folder, tmp_path / "out")
    assert name in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_split_without_train_patients_is_a_settings_error(tmp_path, capsys):
    folder = write_cohort(tmp_path / "pairs")
    lists = {"train": [], "val": CASES[:2], "test": CASES[2:]}
    with pytest.raises(SplitError, match="no patient in train"):
        run(PARAMS.model_copy(update={"split": SplitParams(cases=lists)}), folder, tmp_path / "o")
    params = tmp_path / "p.yaml"
    params.write_text("slices: {source: pairs, size: 16, split: {train: 0, val: 0.5, test: 0.5}}\n")
    argv = ["slices", "--params", str(params), "--input", str(folder), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 2
    assert "p.yaml: slices.split: leaves no patient in train" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # Without --input the folder comes from slices.input.
    params.write_text(f"slices: {{source: pairs, size: 16, input: '{folder}'}}\n")
    assert cli_main(argv[:3] + argv[5:]) == 0
    assert index_of(tmp_path / "o")["input"]["source"] == "pairs"


# ----------------------------------------------------------------------------- real pairs
@pytest.fixture(scope="module")
def real_pairs(real_pair_slices):
    """The stage's run on the 395 real pairs (fov 200 mm, 64 px), all splits loaded."""
    loaded = {s: load_slices(real_pair_slices, s) for s in SPLITS}
    return {"index": index_of(real_pair_slices), "loaded": loaded}


def test_real_pairs_counts_and_patient_split(real_pairs):
    loaded, index = real_pairs["loaded"], real_pairs["index"]
    ids = {s: set(loaded[s][2]["case_id"].tolist()) for s in SPLITS}
    assert sum(len(v) for v in ids.values()) == 43
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert sum(len(loaded[s][0]) for s in SPLITS) == 395
    assert {s: len(ids[s]) for s in SPLITS} == {"train": 25, "val": 9, "test": 9}
    assert index["roi"]["from_cases"] == sorted(ids["train"])


def test_real_pairs_values_masks_and_pancreas_hu(real_pairs):
    images = np.concatenate([real_pairs["loaded"][s][0] for s in SPLITS])[:, 0]
    masks = np.concatenate([real_pairs["loaded"][s][1] for s in SPLITS])[:, 0]
    assert images.dtype == np.float32 and images.min() >= -1 and images.max() <= 1
    assert set(np.unique(masks).tolist()) == {0, 1}
    assert masks.reshape(len(masks), -1).any(axis=1).mean() > 0.95
    level, width = 40.0, 400.0
    hu = level + images[masks > 0] * width / 2  # undo the window
    assert 40.0 < hu.mean() < 150.0, hu.mean()


def test_real_pairs_orientation_and_roi(real_pairs):
    images = np.concatenate([real_pairs["loaded"][s][0] for s in SPLITS])[:, 0]
    masks = np.concatenate([real_pairs["loaded"][s][1] for s in SPLITS])[:, 0]
    size = images.shape[-1]
    # Bone (the spine) is posterior: after the flip the brightest 2% lie in the lower half.
    rows = [np.argwhere(im >= np.quantile(im, 0.98))[:, 0].mean() for im in images]
    assert np.mean(rows) > size / 2 + size / 8 and np.mean(np.array(rows) > size / 2) > 0.75
    # The training-mask offset puts the pancreas near the middle of the 200 mm crop.
    centroids = np.array([np.argwhere(m).mean(axis=0) for m in masks if m.any()])
    assert np.all(np.abs(centroids.mean(axis=0) - (size - 1) / 2) < size / 8), centroids.mean(0)


def test_real_pair_mask_equals_the_volume_label_in_display_orientation(real_data_dir):
    # PANCREAS_0001-1SSS is DICOM 1-SSS.dcm, i.e. slice k = SSS - 1 of label0001. Read through
    # the pairs core and through the volumes' to_display, both masks must be the same pixels.
    label = nib.load(
        real_data_dir / "pancreas_ct" / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz"
    )
    ks = (109, 123, 156)
    vol = np.stack([np.asarray(label.dataobj[:, :, k]) for k in ks], axis=-1)
    display, _ = to_display(vol, label.affine)  # (3, row, col), rows anterior -> posterior
    found = find_pairs(real_data_dir / "pancreas_ct_slices", PairsParams().pattern)
    pairs = {p.slice_index: p for p in found["PANCREAS_0001"]}
    for i, k in enumerate(ks):
        _, mask = read_pair(pairs[1000 + k + 1], PairsParams())
        assert mask.sum() > 500
        np.testing.assert_array_equal(mask, display[i] > 0)
        assert not np.array_equal(mask, display[i, ::-1] > 0)
