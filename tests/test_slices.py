"""``gvae slices``: window, orientation, resampling, selection, split, shards, QC, end to end.

Volumes are tiny synthetic NIfTI files in the ingest layout: a water disc (the body) in air, a
small box labelled as pancreas on a few slices, affine ``diag(-sx, sy, -sz)`` as TCIA stores it.
"""

from __future__ import annotations

import json
import random

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.cli import main as cli_main
from pipeline.cohort.slicing import select_slices, slice_case, to_display, window_hu
from pipeline.cohort.split import split_cases
from pipeline.cohort.write_slices import run
from pipeline.io.contact_sheet import Panel, write_contact_sheet
from pipeline.io.shards import FORMAT, ShardWriter, load_slices, read_shard
from pipeline.params.cohort import SlicesParams, SplitParams

# fov 100 mm on 32 px -> 3.125 mm pixels: a 4x downsample of the ~0.8 mm synthetic input.
TINY = SlicesParams(fov_mm=100.0, size=32, negative_fraction=1.0, shard_size=8, centre="body")


def tcia_affine(sx: float, sy: float, sz: float) -> np.ndarray:
    """RAS affine of a TCIA Pancreas-CT volume: x to the left, y anterior, k inferior."""
    return np.diag([-sx, sy, -sz, 1.0])


def phantom(
    shape=(96, 96, 10),
    spacing=(0.8, 0.8, 2.5),
    radius_mm=35.0,
    centre_mm=(0.0, 0.0),
    pancreas_slices=range(3, 6),
    box_mm=(0.0, 0.0),
):
    """Return ``(hu int16, label uint8, affine)``: a disc of 40 HU in air, a labelled box.

    ``box_mm`` moves the box from the disc centre: +x towards the patient's left, +y anterior.
    """
    cols, rows, n = shape
    x = (np.arange(cols) - (cols - 1) / 2) * spacing[0] - centre_mm[0]
    y = (np.arange(rows) - (rows - 1) / 2) * spacing[1] - centre_mm[1]
    disc = (x[:, None] ** 2 + y[None, :] ** 2) <= radius_mm**2  # (cols, rows)
    hu = np.where(disc[..., None], 40, -1000).astype(np.int16).repeat(n, axis=2)
    label = np.zeros(shape, np.uint8)
    bx, by = x - box_mm[0], y - box_mm[1]
    box = (np.abs(bx[:, None]) < 10) & (np.abs(by[None, :]) < 6)
    for k in pancreas_slices:
        label[..., k] = box
        hu[..., k][box] = 100
    return hu, label, tcia_affine(*spacing)


def write_volumes(folder, cases, errors=()):
    """Write the ingest layout: ``manifest.json``, ``<case>/image.nii.gz`` and ``label.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for cid, (hu, label, affine) in cases.items():
        (folder / cid).mkdir()
        nib.save(nib.Nifti1Image(hu, affine), folder / cid / "image.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / cid / "label.nii.gz")
        rows.append(
            {
                "case_id": cid,
                "status": "ok",
                "error": None,
                "shape": list(hu.shape),
                "spacing": [float(v) for v in nib.affines.voxel_sizes(affine)],
                "label_voxels": int(label.sum()),
                "source_sha256": "0" * 64,
            }
        )
    for cid in errors:
        rows.append({"case_id": cid, "status": "error", "error": "missing slice 7", "shape": None})
    (folder / "manifest.json").write_text(json.dumps(rows))
    return folder


# ----------------------------------------------------------------------------- window
def test_window_hu_known_values_and_clipping():
    hu = np.array([-2000, -160, -60, 40, 140, 240, 3000], dtype=np.int16)
    out = window_hu(hu, level=40, width=400)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_allclose(out, [-1, -1, -0.5, 0, 0.5, 1, 1], atol=1e-6)


def test_window_hu_does_not_mutate_and_survives_int16_extremes():
    hu = np.array([[-32768, 32767], [0, 40]], dtype=np.int16)
    before = hu.copy()
    out = window_hu(hu, level=40, width=400)
    np.testing.assert_array_equal(hu, before)
    np.testing.assert_allclose(out, [[-1, 1], [-0.2, 0]], atol=1e-6)
    f = before.astype(np.float32)
    window_hu(f, 40, 400)
    np.testing.assert_array_equal(f, before.astype(np.float32))


@pytest.mark.parametrize("width", [0.0, -10.0, float("nan")])
def test_window_hu_rejects_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        window_hu(np.zeros(3), level=40, width=width)


# ----------------------------------------------------------------------------- geometry
def _diameter_px(image2d: np.ndarray) -> float:
    area = float((image2d > -0.9).sum())  # body is 40 HU -> 0, air -> -1
    return 2.0 * np.sqrt(area / np.pi)


def test_same_physical_size_for_different_spacings():
    # A 100 mm disc at 0.66 mm and at 0.98 mm pixels: both must be 100 / 3.125 = 32 px wide.
    params = SlicesParams(fov_mm=200.0, size=64, negative_fraction=1.0)
    fine = phantom(shape=(200, 200, 2), spacing=(0.66, 0.66, 2.5), radius_mm=50, pancreas_slices=[])
    coarse = phantom(
        shape=(140, 140, 2), spacing=(0.98, 0.98, 2.5), radius_mm=50, pancreas_slices=[]
    )
    d = [_diameter_px(slice_case(*v, params, "c").image[0, 0]) for v in (fine, coarse)]
    assert abs(d[0] - d[1]) <= 1.0, d
    assert abs(d[0] - 32.0) <= 1.0 and abs(d[1] - 32.0) <= 1.0, d


def test_crop_is_centred_on_the_body_and_padded_with_air():
    # Body 20 mm right-posterior of the volume centre; the output must be centred on it anyway.
    hu, label, affine = phantom(centre_mm=(-20.0, -15.0), radius_mm=25, pancreas_slices=[])
    # fov > the 77 mm input
    params = SlicesParams(fov_mm=150.0, size=32, negative_fraction=1.0, centre="body")
    img = slice_case(hu, label, affine, params, "c").image[0, 0]
    rows, cols = np.nonzero(img > -0.9)
    assert abs(rows.mean() - 15.5) < 0.75 and abs(cols.mean() - 15.5) < 0.75
    # Corners lie outside the input volume: padded with air, which windows to exactly -1.
    assert img[0, 0] == -1.0 and img[-1, -1] == -1.0


def test_downsampling_is_anti_aliased():
    # Stripes one 0.7 mm pixel wide at the window edges (-1, +1) are far above the 3.125 mm
    # output's Nyquist limit: the output must show their average (0), not an aliased pattern.
    hu = np.where(np.arange(200)[:, None, None] % 2 == 0, -160, 240).astype(np.int16)
    hu = np.broadcast_to(hu, (200, 200, 1)).copy()
    params = TINY.model_copy(update={"negative_fraction": 1.0})
    img = slice_case(hu, np.zeros_like(hu, np.uint8), tcia_affine(0.7, 0.7, 2.5), params, "c")
    assert np.abs(img.image).max() < 0.1


@pytest.mark.parametrize(
    "diag, expected_rc",
    [
        ((-1.0, 1.0), (12 - 1 - 3, 2)),  # TCIA: x -> left, y -> anterior: rows flip
        ((-1.0, -1.0), (3, 2)),  # DICOM LPS default: x -> left, y -> posterior: as stored
        ((1.0, 1.0), (12 - 1 - 3, 10 - 1 - 2)),  # x -> right: columns flip too
    ],
)
def test_to_display_orientation(diag, expected_rc):
    vol = np.zeros((10, 12, 4), np.int16)  # (cols, rows, k)
    vol[2, 3, 1] = 7
    disp, spacing = to_display(vol, np.diag([diag[0] * 0.7, diag[1] * 0.9, -2.5, 1.0]))
    assert disp.shape == (4, 12, 10)
    assert np.argwhere(disp).tolist() == [[1, *expected_rc]]
    assert spacing == pytest.approx((0.9, 0.7))


def test_to_display_transposed_storage_and_non_axial():
    vol = np.zeros((12, 10, 4), np.int16)  # stored (rows, cols, k): voxel axis 0 runs along y
    vol[3, 2, 1] = 7
    affine = np.array([[0, -0.7, 0, 0], [0.9, 0, 0, 0], [0, 0, -2.5, 0], [0, 0, 0, 1.0]])
    disp, spacing = to_display(vol, affine)
    assert np.argwhere(disp).tolist() == [[1, 12 - 1 - 3, 2]]
    assert spacing == pytest.approx((0.9, 0.7))
    sagittal = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    with pytest.raises(ValueError, match="not axial"):
        to_display(vol, sagittal)


def test_marker_ends_up_anterior_right_in_the_output():
    # A bone marker 20 mm to the patient's right and 20 mm anterior of the body centre must land
    # up and to the viewer's left of the output centre (radiological view).
    hu, label, affine = phantom(radius_mm=35, pancreas_slices=[])
    c = (96 - 1) / 2
    i = int(round(c - 20 / 0.8))  # x_RAS = -0.8 i: smaller i is further right
    j = int(round(c + 20 / 0.8))  # y_RAS = +0.8 j: larger j is further anterior
    hu[i - 1 : i + 2, j - 1 : j + 2, :] = 1500
    img = slice_case(hu, label, affine, TINY, "c").image[0, 0]
    r, col = np.unravel_index(np.argmax(img), img.shape)
    pixel = TINY.fov_mm / TINY.size
    assert r == pytest.approx(15.5 - 20 / pixel, abs=1.0)
    assert col == pytest.approx(15.5 - 20 / pixel, abs=1.0)


# ----------------------------------------------------------------------------- selection
def test_negative_fraction_keeps_all_positives_and_a_seeded_share_of_negatives():
    mask = np.zeros((20, 4, 4), bool)
    mask[5:10, 1, 1] = True
    keep = select_slices(mask, 0.4, seed=[0, 1])
    assert set(range(5, 10)) <= set(keep.tolist())
    assert len(keep) == 5 + 6  # round(0.4 * 15)
    assert np.array_equal(keep, np.sort(keep))
    assert np.array_equal(keep, select_slices(mask, 0.4, seed=[0, 1]))
    assert select_slices(mask, 0.0, seed=0).tolist() == list(range(5, 10))
    assert select_slices(mask, 1.0, seed=0).tolist() == list(range(20))


def test_slice_case_counts_follow_negative_fraction():
    hu, label, affine = phantom(shape=(64, 64, 20), pancreas_slices=range(5, 10))
    cs = slice_case(hu, label, affine, TINY.model_copy(update={"negative_fraction": 0.4}), "c")
    assert (cs.positive, cs.negative, cs.n_slices) == (5, 6, 20)
    assert cs.image.shape == (11, 1, 32, 32) and cs.mask.shape == (11, 1, 32, 32)
    assert cs.image.dtype == np.float32 and cs.mask.dtype == np.uint8
    assert set(range(5, 10)) <= set(cs.slice_index.tolist())
    assert cs.image.min() >= -1 and cs.image.max() <= 1
    # The labelled box (20 x 12 mm) is ~6.4 x 3.8 output pixels: resampled, not lost or smeared.
    assert 12 <= int(cs.mask[cs.slice_index == 5].sum()) <= 40


# ----------------------------------------------------------------------------- split
IDS = [f"PANCREAS_{i:04d}" for i in range(1, 11)]


def test_split_is_disjoint_complete_and_order_independent():
    params = SplitParams(seed=3)
    a = split_cases(IDS, params)
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert split_cases(shuffled, params) == a
    assert sorted(a["train"] + a["val"] + a["test"]) == IDS
    assert [len(a[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not (set(a["train"]) & set(a["val"]) or set(a["train"]) & set(a["test"]))
    others = [split_cases(IDS, SplitParams(seed=s)) for s in range(4, 9)]
    assert any(o != a for o in others), "the seed must change the split"


def test_split_explicit_lists_are_honoured():
    lists = {"train": IDS[:7], "val": IDS[7:8], "test": IDS[8:]}
    out = split_cases(IDS[::-1], SplitParams(cases=lists))
    assert out == {k: sorted(v) for k, v in lists.items()}


def test_split_explicit_lists_missing_or_unknown_cases():
    lists = {"train": IDS[:6], "val": IDS[6:8], "test": ["PANCREAS_0099"]}
    with pytest.raises(ValueError, match="does not assign 2 case.*PANCREAS_0009, PANCREAS_0010"):
        split_cases(IDS, SplitParams(cases=lists))
    with pytest.raises(ValueError, match="not in the volumes: PANCREAS_0099"):
        split_cases(IDS[:8], SplitParams(cases=lists))
    out = split_cases(IDS[:8], SplitParams(cases=lists), unavailable=["PANCREAS_0099"])
    assert out["test"] == [] and out["train"] == IDS[:6]


def test_split_overlapping_explicit_lists_rejected():
    with pytest.raises(ValidationError, match="PANCREAS_0001 is listed in both train and test"):
        SplitParams(cases={"train": IDS[:2], "test": IDS[:1]})


@pytest.mark.parametrize(
    "n, pattern", [(2, "cannot split 2 case.*needs at least one"), (0, "0 case")]
)
def test_split_too_few_cases(n, pattern):
    with pytest.raises(ValueError, match=pattern):
        split_cases(IDS[:n], SplitParams())
    assert (
        sum(map(len, split_cases(IDS[:2], SplitParams(train=0.5, val=0.5, test=0)).values())) == 2
    )


# ----------------------------------------------------------------------------- shards + QC
def test_shards_round_trip_through_load_slices(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (7, 1, 16, 16)).astype(np.float32)
    msk = (rng.uniform(size=(7, 1, 16, 16)) > 0.5).astype(np.uint8)
    writer = ShardWriter(tmp_path / "train", 3, prefix="train/")
    writer.add(img[:4], msk[:4], "case_a", np.arange(4))
    writer.add(img[4:], msk[4:], "case_long_name", np.array([10, 11, 12]))
    names = writer.close()
    assert names == [f"train/shard-0000{i}.npz" for i in range(3)]
    assert len(read_shard(tmp_path / names[-1])["image"]) == 1
    index = {
        "format": FORMAT,
        "size": 16,
        "pixel_mm": 1.0,
        "window": {"level": 40, "width": 400},
        "axes": {},
        "splits": {"train": {"cases": ["case_a", "case_long_name"], "shards": names, "slices": 7}},
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    images, masks, meta = load_slices(tmp_path, "train")
    np.testing.assert_array_equal(images, img)
    np.testing.assert_array_equal(masks, msk)
    assert meta["case_id"].tolist() == ["case_a"] * 4 + ["case_long_name"] * 3
    assert meta["slice_index"].tolist() == [0, 1, 2, 3, 10, 11, 12]
    with pytest.raises(ValueError, match="no split 'val'"):
        load_slices(tmp_path, "val")


def test_contact_sheet_is_a_real_image_with_red_contours(tmp_path):
    yy, xx = np.mgrid[:32, :32]
    image = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 150, 0.0, -1.0).astype(np.float32)
    mask = ((abs(yy - 16) < 4) & (abs(xx - 14) < 6)).astype(np.uint8)
    dest = tmp_path / "sheet.png"
    write_contact_sheet(dest, [Panel(image, mask, f"case{i} k=3") for i in range(5)])
    png = mpimg.imread(dest)  # raises if the file is not a valid PNG
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    rgb = png[..., :3]
    assert rgb.std() > 0.05
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
    assert red.sum() > 20


# ----------------------------------------------------------------------------- end to end
def five_cases():
    """Five phantom cases of 0.66-0.98 mm pixels with 2-4 pancreas slices each."""
    cases = {}
    for i in range(5):
        sp = 0.66 + 0.08 * i
        n = int(round(70 / sp))
        cases[f"PANCREAS_{i + 1:04d}"] = phantom(
            shape=(n, n, 10), spacing=(sp, sp, 2.5), pancreas_slices=range(2 + i % 3, 6)
        )
    return cases


def test_cli_end_to_end_skips_error_cases(tmp_path, capsys):
    volumes = write_volumes(tmp_path / "volumes", five_cases(), errors=["PANCREAS_0077"])
    params = tmp_path / "params.yaml"
    params.write_text(
        "slices:\n  fov_mm: 100\n  size: 32\n  negative_fraction: 0.5\n  shard_size: 4\n"
    )
    out = tmp_path / "slices"
    argv = ["slices", "--params", str(params), "--volumes", str(volumes), "--out", str(out)]
    assert cli_main(argv) == 0
    assert "skipping PANCREAS_0077" in capsys.readouterr().err
    index = json.loads((out / "index.json").read_text())
    assert index["size"] == 32 and index["pixel_mm"] == pytest.approx(100 / 32)
    assert index["skipped"] == [{"case_id": "PANCREAS_0077", "error": "ingest: missing slice 7"}]
    assigned = [c for s in ("train", "val", "test") for c in index["splits"][s]["cases"]]
    assert sorted(assigned) == sorted(five_cases()) and len(set(assigned)) == 5
    total = 0
    for split, entry in index["splits"].items():
        images, masks, meta = load_slices(out, split)
        assert len(images) == entry["slices"] == entry["positive"] + entry["negative"]
        assert set(meta["case_id"].tolist()) == set(entry["cases"])
        assert all((out / name).is_file() for name in entry["shards"])
        total += len(images)
    # 3 + 2 + 1 + 3 + 2 pancreas slices, plus round(0.5 * (10 - p)) negatives per case.
    positives = [4, 3, 2, 4, 3]
    assert total == sum(p + int(np.floor(0.5 * (10 - p) + 0.5)) for p in positives)
    assert mpimg.imread(out / "contact_sheet.png").shape[0] > 100

    # A rerun replaces the folder in one piece and leaves no temporary folder behind.
    assert cli_main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "slices", "volumes"]


def test_unreadable_case_is_skipped_and_named(tmp_path):
    cases = five_cases()
    volumes = write_volumes(tmp_path / "volumes", cases)
    (volumes / "PANCREAS_0002" / "label.nii.gz").write_bytes(b"not a nifti")
    summary = run(TINY, volumes, tmp_path / "out")
    assert [s["case_id"] for s in summary["skipped"]] == ["PANCREAS_0002"]
    assert "PANCREAS_0002/label.nii.gz" in summary["skipped"][0]["error"]
    assert sum(summary["cases"].values()) == 4


def test_cli_too_few_cases_is_a_clear_error(tmp_path, capsys):
    volumes = write_volumes(tmp_path / "volumes", dict(list(five_cases().items())[:2]))
    params = tmp_path / "p.yaml"
    params.write_text("slices: {size: 32}\n")
    argv = [
        "slices",
        "--params",
        str(params),
        "--volumes",
        str(volumes),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "p.yaml" in err and "cannot split 2 case(s)" in err
    assert not (tmp_path / "o").exists()


def test_ct_training_pairs_are_image_and_mask_channels(tmp_path):
    """The generative stages see each slice as (image, mask) in [-1, 1]: labels come along."""
    from pipeline.sanity.datasets import load_images

    volumes = write_volumes(tmp_path / "volumes", five_cases())
    out = tmp_path / "slices"
    run(SlicesParams(fov_mm=100, size=32, shard_size=4), volumes, out)
    images, masks, _ = load_slices(out, "train")
    pairs, labels = load_images("pancreas", out, "train")
    assert labels is None
    assert tuple(pairs.shape) == (len(images), 2, 32, 32)
    assert np.array_equal(pairs[:, :1].numpy(), images)
    assert set(np.unique(pairs[:, 1].numpy())) <= {-1.0, 1.0}
    assert np.array_equal(pairs[:, 1:].numpy() > 0, masks > 0)
    assert tuple(load_images("pancreas", out, "train", limit=2)[0].shape) == (2, 2, 32, 32)
