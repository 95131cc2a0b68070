"""Labels are placed on the CT grid by physical geometry (pipeline/io/label_geometry.py).

Synthetic grids check the exact copy, the nearest-neighbour resample and the rejection; the real
TCIA patient (Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU, CC BY 3.0) is re-saved at test
time in other voxel orders, cropped, resampled and shifted, and every variant goes through
``ingest_case``. Only the label changes between variants, so the series is read once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline import cli
from pipeline.cohort import ingest
from pipeline.cohort.sources import tcia
from pipeline.io.dicom_read import read_series
from pipeline.io.label_geometry import place_label, resample_nearest, voxel_transform
from pipeline.params.loader import IngestParams

CASE = "PANCREAS_0001"
TOL = {"grid_tolerance_mm": 0.1, "outside_tolerance_mm": 1.0}


# ----------------------------------------------------------------------------- synthetic grids
def reoriented(img: nib.Nifti1Image, codes: tuple[str, str, str]) -> nib.Nifti1Image:
    """The same voxels and anatomy in another voxel order (nibabel adjusts the affine)."""
    start = nib.orientations.io_orientation(img.affine)
    return img.as_reoriented(
        nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(codes))
    )


@pytest.fixture
def small():
    """A random label on an oblique CT-like grid (rotated 20 degrees about z, mm spacing)."""
    rng = np.random.default_rng(0)
    label = (rng.random((9, 8, 7)) < 0.4).astype(np.uint8)
    t = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine[:3, :3] = affine[:3, :3] @ np.diag([0.7, 0.8, 1.5])
    affine[:3, 3] = (-12.0, 30.5, 7.25)
    return nib.Nifti1Image(label, affine)


@pytest.mark.parametrize(
    "codes", [("R", "A", "S"), ("L", "P", "S"), ("S", "R", "A"), ("I", "L", "P")]
)
def test_reoriented_grid_is_copied_exactly(small, codes):
    other = reoriented(small, codes)
    before = np.asanyarray(other.dataobj).copy()
    out, method = place_label(
        np.asanyarray(other.dataobj), other.affine, small.shape, small.affine, **TOL
    )
    assert method == "exact" and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asanyarray(small.dataobj))
    np.testing.assert_array_equal(np.asanyarray(other.dataobj), before)  # input untouched


def test_crop_is_pasted_in_place(small):
    crop = reoriented(small, ("L", "P", "S")).slicer[2:6, 1:7, 3:]
    out, method = place_label(
        np.asanyarray(crop.dataobj), crop.affine, small.shape, small.affine, **TOL
    )
    expected = np.zeros(small.shape, np.uint8)
    # LPS flips the first two axes of this grid, so the crop covers the mirrored index ranges.
    expected[3:7, 1:7, 3:] = np.asanyarray(small.dataobj)[3:7, 1:7, 3:]
    assert method == "exact"
    np.testing.assert_array_equal(out, expected)


def test_grid_tolerance_decides_exact_or_nearest(small):
    label, affine = np.asanyarray(small.dataobj), small.affine.copy()
    affine[:3, 3] += (0.05, 0.0, 0.0)  # 0.05 mm: rounding noise, still the same lattice
    assert place_label(label, affine, small.shape, small.affine, **TOL)[1] == "exact"
    affine[:3, 3] += (0.25, 0.0, 0.0)  # 0.3 mm: another lattice, resampled
    out, method = place_label(label, affine, small.shape, small.affine, **TOL)
    assert method == "nearest"
    np.testing.assert_array_equal(out, label)  # under half a voxel: the same voxels


def test_nearest_matches_simpleitk_on_a_rotated_grid(small):
    ct_affine = np.diag([0.5, 0.6, 1.0, 1.0])
    ct_affine[:3, 3] = (-15.0, 25.0, 5.1)  # no CT centre half-way between two label slices
    label = np.asanyarray(small.dataobj)
    out, method = place_label(label, small.affine, (30, 30, 14), ct_affine, **TOL)
    assert method == "nearest"

    def image(array, affine):  # NIfTI RAS -> ITK LPS; ITK arrays are (z, y, x)
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        img = sitk.GetImageFromArray(array.transpose(2, 1, 0))
        img.SetSpacing(spacing.tolist())
        img.SetOrigin(lps[:3, 3].tolist())
        img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
        return img

    ref = sitk.Resample(
        image(label, small.affine),
        image(np.zeros((30, 30, 14), np.uint8), ct_affine),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
    )
    np.testing.assert_array_equal(out, sitk.GetArrayFromImage(ref).transpose(2, 1, 0))
    assert 0 < out.sum() < label.size


def test_nearest_follows_its_definition_on_a_sheared_grid(small):
    label = np.asanyarray(small.dataobj)
    sheared = small.affine.copy()
    sheared[:3, 1] += (0.3, 0.0, 0.0)
    ct_shape, ct_affine = (24, 24, 14), np.diag([0.6, 0.6, 1.0, 1.0])
    ct_affine[:3, 3] = (-15.0, 25.0, 5.1)
    out = resample_nearest(label, sheared, ct_shape, ct_affine)
    # Definition: each CT voxel centre, in label voxel coordinates, rounded; +/- half a voxel.
    to_label = np.linalg.inv(voxel_transform(sheared, ct_affine))
    idx = np.indices(ct_shape).reshape(3, -1)
    at = np.floor(to_label[:3, :3] @ idx + to_label[:3, 3:4] + 0.5).astype(int)
    inside = np.all((at >= 0) & (at < np.array(label.shape)[:, None]), axis=0)
    expected = np.zeros(idx.shape[1], np.uint8)
    expected[inside] = label[tuple(at[:, inside])]
    np.testing.assert_array_equal(out, expected.reshape(ct_shape))
    assert out.sum() > 0


@pytest.mark.parametrize("axis,shift_mm", [(0, -5.0), (2, 30.0)])
def test_grid_outside_the_ct_is_rejected(small, axis, shift_mm):
    label, affine = np.asanyarray(small.dataobj), small.affine.copy()
    affine[:3, 3] += affine[:3, axis] / np.linalg.norm(affine[:3, axis]) * shift_mm
    expected = (
        rf"reaches {abs(shift_mm):.1f} mm beyond the CT volume .* along CT axis {'ijk'[axis]}"
    )
    with pytest.raises(ValueError, match=expected):
        place_label(label, affine, small.shape, small.affine, **TOL)


def test_singular_affine_is_rejected(small):
    affine = small.affine.copy()
    affine[:3, 2] = 0.0
    with pytest.raises(ValueError, match="singular"):
        place_label(np.asanyarray(small.dataobj), affine, small.shape, small.affine, **TOL)


# ----------------------------------------------------------------------------- the real patient
@pytest.fixture(scope="module")
def real(real_data_dir, tmp_path_factory):
    """The real case, its TCIA label, one series read shared by every ingest_case call, and the
    plain run's row and label."""
    src = real_data_dir / "pancreas_ct"
    series = read_series(src / "Pancreas-CT" / CASE)
    with pytest.MonkeyPatch.context() as patch:
        # ingest_case still runs whole (hash, placement, checks, writes); only the read is reused.
        patch.setattr(tcia, "read_series", lambda folder, *args, **kwargs: series)
        data = {
            "src": src,
            "case_dir": src / "Pancreas-CT" / CASE,
            "tcia": nib.load(src / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz"),
            "hu": series[0],
            "tmp": tmp_path_factory.mktemp("label_geometry"),
        }
        data["plain"] = run_variant(data, "plain", data["tcia"])
        yield data


def run_variant(
    real: dict, name: str, img: nib.Nifti1Image, **params
) -> tuple[dict, np.ndarray | None, Path]:
    """Save ``img`` as the case's label and ingest it; return (row, output label or None, out)."""
    labels = real["tmp"] / name / "labels"
    labels.mkdir(parents=True)
    nib.save(img, labels / "label0001.nii")  # uncompressed: gzip would dominate the test time
    out = real["tmp"] / name / "out"
    row = ingest.ingest_case(real["case_dir"], labels, out, IngestParams(workers=1, **params))
    label = None
    if row["status"] == "ok":
        label = np.asanyarray(nib.load(out / CASE / "label.nii.gz").dataobj)
    return row, label, out


def assert_pancreas(row: dict, real: dict, label: np.ndarray) -> None:
    """The row's HU figures are those under ``label`` and read as pancreas (data README)."""
    mean, sd = ingest.label_hu_stats(real["hu"], label)
    assert row["label_hu_mean"] == pytest.approx(mean, abs=0.01)
    assert row["label_hu_sd"] == pytest.approx(sd, abs=0.01)
    assert 98.0 <= row["label_hu_mean"] <= 108.0 and row["label_hu_sd"] < 40.0, row
    assert row["warning"] is None


@pytest.mark.real_data
def test_plain_tcia_label_is_unchanged(real):
    row, label, out = real["plain"]
    assert row["status"] == "ok" and row["label_placement"] == "exact", row
    assert row["label_voxels"] == 78329
    np.testing.assert_allclose(
        nib.load(out / CASE / "image.nii.gz").affine, real["tcia"].affine, atol=1e-6
    )
    # The rule before this change (pairing by InstanceNumber) gives the same bytes.
    by_instance, _, out_instance = run_variant(
        real, "instance", real["tcia"], label_geometry="instance"
    )
    assert by_instance["label_placement"] == "instance"
    for name in ("image.nii.gz", "label.nii.gz"):
        assert (out / CASE / name).read_bytes() == (out_instance / CASE / name).read_bytes()
    np.testing.assert_array_equal(label, np.asanyarray(real["tcia"].dataobj))


@pytest.mark.real_data
def test_manifest_row_has_the_hu_statistics(real):
    row, label, _ = real["plain"]
    assert_pancreas(row, real, label)
    assert row["label_hu_mean"] == pytest.approx(102.6, abs=0.05)
    assert row["label_hu_sd"] == pytest.approx(30.9, abs=0.05)


@pytest.mark.real_data
@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("S", "R", "A")])
def test_reoriented_real_label_lands_on_the_same_voxels(real, codes):
    row, label, _ = run_variant(real, "".join(codes), reoriented(real["tcia"], codes))
    assert row["status"] == "ok" and row["label_placement"] == "exact", row
    assert int(np.count_nonzero(label != real["plain"][1])) == 0
    assert_pancreas(row, real, label)


@pytest.mark.real_data
def test_cropped_real_label_is_pasted_in_place(real):
    crop = real["tcia"].slicer[150:400, 200:320, 80:190]  # holds every pancreas voxel
    row, label, _ = run_variant(real, "crop", crop)
    assert row["status"] == "ok" and row["label_placement"] == "exact", row
    assert int(np.count_nonzero(label != real["plain"][1])) == 0
    assert_pancreas(row, real, label)


@pytest.mark.real_data
def test_real_label_on_2mm_slices_is_resampled(real):
    # Every other slice with the slice step doubled: a nearest-neighbour resample to 2 mm.
    coarse = real["tcia"].slicer[:, :, ::2]
    assert coarse.shape[2] == 120 and coarse.affine[2, 2] == pytest.approx(-2.0)
    row, label, _ = run_variant(real, "2mm", coarse)
    assert row["status"] == "ok" and row["label_placement"] == "nearest", row
    assert abs(row["label_voxels"] - 78329) < 0.05 * 78329
    assert_pancreas(row, real, label)


@pytest.mark.real_data
def test_real_label_moved_30mm_is_rejected(real):
    affine = real["tcia"].affine.copy()
    affine[2, 3] += 30.0
    moved = nib.Nifti1Image(np.asanyarray(real["tcia"].dataobj), affine)
    row, _, out = run_variant(real, "moved", moved)
    assert row["status"] == "error" and not (out / CASE).exists()
    assert f"{real['tmp'] / 'moved' / 'labels' / 'label0001.nii'}: " in row["error"]
    assert "reaches 30.0 mm beyond the CT volume" in row["error"]


@pytest.mark.real_data
def test_flipped_label_with_a_lying_affine_warns_and_fails_strict(real, capsys):
    # Flipped left-right but the affine kept: placed where it claims to be, on the wrong side.
    lying = nib.Nifti1Image(np.asanyarray(real["tcia"].dataobj)[::-1], real["tcia"].affine)
    labels = real["tmp"] / "lying" / "labels"
    labels.mkdir(parents=True)
    nib.save(lying, labels / "label0001.nii")
    # A folder holding only this case: the shared series stands in for whatever read_series reads.
    images = real["tmp"] / "lying" / "images"
    images.mkdir()
    (images / CASE).symlink_to(real["case_dir"], target_is_directory=True)
    rows = ingest.run(IngestParams(workers=1), images, labels, real["tmp"] / "lying" / "out")
    (row,) = rows
    assert row["status"] == "ok" and row["label_hu_sd"] > 45.0, row
    assert f"{labels / 'label0001.nii'}: " in row["warning"]
    assert "not soft tissue" in row["warning"]
    assert f"{CASE}: warning: {row['warning']}" in capsys.readouterr().err

    params = real["tmp"] / "lying" / "params.yaml"
    params.write_text("ingest:\n  workers: 1\n")
    out = real["tmp"] / "lying" / "strict"
    argv = ["ingest", "--params", str(params), "--images", str(images), "--labels", str(labels)]
    assert cli.main([*argv, "--out", str(out), "--strict"]) == 1
    (row,) = json.loads((out / "manifest.json").read_text())
    assert row["status"] == "error" and row["error"].endswith("misaligned? (strict)")
    assert not (out / CASE).exists()
