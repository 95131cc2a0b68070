"""``gvae ingest`` on tiny synthetic series: HU, ordering, affine, labels, manifest, workers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.cohort import ingest
from pipeline.io import nifti
from pipeline.io.dicom_read import affine_ras, read_series, slice_normal
from pipeline.io.dicom_write import SeriesHeader, slice_positions, write_ct_series
from pipeline.io.nifti import align_label
from pipeline.params.loader import IngestParams

# HU written only inside the label, so a misaligned label is visible at once; soft tissue, so the
# label passes ingest's HU plausibility check.
MARK = 100

# name -> SeriesHeader geometry. "axial": instance 1 most superior, so instance order runs
# against the normal; "tcia": Pancreas-CT's own geometry, instance order runs with the normal.
GEOMETRIES = {
    "axial": {"orientation": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)},
    "tcia": {"orientation": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), "slice_direction": (0.0, 0.0, -1.0)},
    "oblique": {"orientation": (0.6, 0.8, 0.0, -0.64, 0.48, 0.6)},
}


@dataclass
class Case:
    series_dir: Path
    hu: np.ndarray  # (instances, rows, cols), instance order
    mask: np.ndarray  # same shape, bool
    label_path: Path


def make_case(
    images: Path,
    labels: Path,
    case_id: str = "PANCREAS_0001",
    n: int = 8,
    rows: int = 24,
    cols: int = 32,
    seed: int = 0,
    filenames: list[str] | None = None,
    **header_kw,
) -> Case:
    """Write a tiny series plus a TCIA-convention label: label[x=col, y=row, k=instance-1], with
    the RAS affine of that voxel order, as TCIA's labels carry it."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=(n, rows, cols)).astype(np.int16)
    hu[hu == MARK] = MARK - 1
    mask = rng.random((n, rows, cols)) < 0.15  # random, so no flip or transpose maps it to itself
    mask[0] = False
    hu[mask] = MARK
    kw = {"pixel_spacing": (0.8, 0.7), "slice_step_mm": 1.5, "slice_thickness_mm": 1.5}
    header = SeriesHeader(patient_id=case_id, **{**kw, **header_kw})
    series_dir = images / case_id / "1.2.3-study" / "4.5.6-series"
    write_ct_series(series_dir, hu, header, filenames=filenames)
    labels.mkdir(parents=True, exist_ok=True)
    label_path = labels / f"label{case_id.rsplit('_', 1)[-1]}.nii.gz"
    first, second = slice_positions(header, 2)
    step = float((second - first) @ slice_normal(header.orientation))  # < 0: against the normal
    affine = affine_ras(header.orientation, header.pixel_spacing, first, step)
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0).astype(np.uint8), affine), label_path)
    return Case(series_dir, hu, mask, label_path)


def sitk_read(series_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reference reader: SimpleITK/GDCM volume as (x, y, z) and its affine converted to RAS."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_dir)))
    img = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), np.diag([-1, -1, 1, 1]) @ lps


def ingest_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "images", tmp_path / "labels", tmp_path / "out"


def load_case(out: Path, case_id: str = "PANCREAS_0001"):
    image = nib.load(out / case_id / "image.nii.gz")
    label = nib.load(out / case_id / "label.nii.gz")
    return image, label


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("slope,intercept", [(1.0, -1024.0), (0.5, -1000.0)])
def test_hu_and_affine_match_simpleitk(tmp_path, geometry, slope, intercept):
    images, labels, _ = ingest_dirs(tmp_path)
    case = make_case(
        images,
        labels,
        **GEOMETRIES[geometry],
        origin=(-120.5, -80.25, 40.0),
        rescale_slope=slope,
        rescale_intercept=intercept,
    )
    hu, affine, meta = read_series(case.series_dir.parent.parent)
    ref_hu, ref_affine = sitk_read(case.series_dir)
    assert hu.dtype == np.int16 and hu.shape == (32, 24, 8)
    np.testing.assert_array_equal(hu, ref_hu)
    np.testing.assert_allclose(affine, ref_affine, atol=1e-3)
    np.testing.assert_allclose(meta.spacing, (0.7, 0.8, 1.5), atol=1e-3)
    # Every instance's pixels land, transposed, in exactly one k.
    for k, inst in enumerate(meta.instance_numbers):
        np.testing.assert_array_equal(hu[:, :, k], case.hu[inst - 1].T)


def test_slice_k_runs_along_the_normal(tmp_path):
    images, labels, _ = ingest_dirs(tmp_path)
    case = make_case(images, labels)  # axial: instance 1 is the most superior (largest z)
    hu, affine, meta = read_series(images / "PANCREAS_0001")
    assert meta.instance_numbers == tuple(range(8, 0, -1))
    z = [(affine @ [0, 0, k, 1])[2] for k in range(hu.shape[2])]
    assert np.all(np.diff(z) > 0)
    np.testing.assert_array_equal(hu[:, :, 0], case.hu[-1].T)


def test_order_ignores_file_names(tmp_path):
    images_a, labels_a, _ = ingest_dirs(tmp_path / "a")
    images_b, labels_b, _ = ingest_dirs(tmp_path / "b")
    make_case(images_a, labels_a)
    shuffled = [f"{name}.dcm" for name in np.random.default_rng(1).permutation(list("abcdefgh"))]
    make_case(images_b, labels_b, filenames=shuffled)
    hu_a, affine_a, _ = read_series(images_a / "PANCREAS_0001")
    hu_b, affine_b, _ = read_series(images_b / "PANCREAS_0001")
    np.testing.assert_array_equal(hu_a, hu_b)
    np.testing.assert_array_equal(affine_a, affine_b)


@pytest.mark.parametrize("rule", ["affine", "instance"])
@pytest.mark.parametrize(
    "geometry,instances_in_k_order",
    [("axial", list(range(8, 0, -1))), ("tcia", list(range(1, 9)))],
)
def test_label_follows_instance_numbers(tmp_path, geometry, instances_in_k_order, rule):
    images, labels, out = ingest_dirs(tmp_path)
    case = make_case(images, labels, **GEOMETRIES[geometry])
    _, _, meta = read_series(images / "PANCREAS_0001")
    assert list(meta.instance_numbers) == instances_in_k_order
    rows = ingest.run(IngestParams(workers=1, label_geometry=rule), images, labels, out)
    assert rows[0]["status"] == "ok", rows
    assert rows[0]["label_placement"] == ("exact" if rule == "affine" else "instance")
    image, label = load_case(out)
    hu, lab = np.asanyarray(image.dataobj), np.asanyarray(label.dataobj)
    assert label.get_data_dtype() == np.uint8 and image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(label.affine, image.affine)
    assert np.all(hu[lab > 0] == MARK)
    assert np.count_nonzero(lab) == np.count_nonzero(case.mask)
    assert np.count_nonzero(hu == MARK) == np.count_nonzero(case.mask)


def test_align_label_permutes_by_instance_number():
    label = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    before = label.copy()
    out = align_label(label, [12, 10, 13, 11], (2, 3, 4))  # a run starting at 10
    np.testing.assert_array_equal(out, label[:, :, [2, 0, 3, 1]])
    np.testing.assert_array_equal(label, before)
    assert not np.shares_memory(out, label)
    with pytest.raises(ValueError, match="contiguous"):
        align_label(label, [1, 2, 4, 5], (2, 3, 4))
    with pytest.raises(ValueError, match="contiguous"):
        align_label(label, [1, 2, 2, 3], (2, 3, 4))
    with pytest.raises(ValueError, match="does not match image shape"):
        align_label(label, [1, 2, 3, 4], (3, 2, 4))


def test_manifest_rows_and_provenance_hash(tmp_path):
    images, labels, out = ingest_dirs(tmp_path)
    case = make_case(images, labels)
    rows = ingest.run(IngestParams(workers=1), images, labels, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == rows
    (row,) = manifest
    assert set(row) == {
        "case_id",
        "status",
        "error",
        "shape",
        "spacing",
        "label_voxels",
        "label_placement",
        "label_hu_mean",
        "label_hu_sd",
        "warning",
        "source_sha256",
        "series",
        "skipped_series",
        "skipped_files",
    }
    assert row["series"]["slices"] == 8 and row["skipped_series"] == [] == row["skipped_files"]
    assert row["case_id"] == "PANCREAS_0001" and row["status"] == "ok" and row["error"] is None
    assert row["label_placement"] == "exact" and row["warning"] is None
    assert row["label_hu_mean"] == MARK and row["label_hu_sd"] == 0
    assert row["shape"] == [32, 24, 8]
    np.testing.assert_allclose(row["spacing"], [0.7, 0.8, 1.5])
    assert row["label_voxels"] == int(case.mask.sum())
    digest = hashlib.sha256()
    case_dir = images / "PANCREAS_0001"
    for path in sorted(case_dir.rglob("*.dcm")) + [case.label_path]:
        name = path.name if path == case.label_path else str(path.relative_to(case_dir))
        digest.update(name.encode() + b"\0" + path.read_bytes())
    assert row["source_sha256"] == digest.hexdigest()
    # Any changed input byte changes the provenance.
    first = sorted(case.series_dir.iterdir())[0]
    data = first.read_bytes()
    first.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    rows2 = ingest.run(IngestParams(workers=1), images, labels, tmp_path / "out2")
    assert rows2[0]["source_sha256"] != row["source_sha256"]


def test_parallel_workers_give_identical_output(tmp_path):
    images, labels, _ = ingest_dirs(tmp_path)
    for i in range(1, 4):
        make_case(images, labels, case_id=f"PANCREAS_{i:04d}", seed=i, n=6 + i)
    serial = ingest.run(IngestParams(workers=1), images, labels, tmp_path / "serial")
    parallel = ingest.run(IngestParams(workers=2), images, labels, tmp_path / "parallel")
    assert serial == parallel and [r["case_id"] for r in serial] == [
        "PANCREAS_0001",
        "PANCREAS_0002",
        "PANCREAS_0003",
    ]
    for row in serial:
        for name in ("image.nii.gz", "label.nii.gz"):
            a = (tmp_path / "serial" / row["case_id"] / name).read_bytes()
            b = (tmp_path / "parallel" / row["case_id"] / name).read_bytes()
            assert a == b, f"{row['case_id']}/{name} differs between 1 and 2 workers"


def test_case_folder_is_replaced_atomically(tmp_path, monkeypatch):
    images, labels, out = ingest_dirs(tmp_path)
    make_case(images, labels)
    calls = {"n": 0}
    real_write = nifti.write_nifti

    def failing_second_write(dest, array, affine):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(f"{dest}: disk full")
        return real_write(dest, array, affine)

    # A failure after image.nii.gz is written leaves no case folder and no temporaries behind.
    monkeypatch.setattr(ingest, "write_nifti", failing_second_write)
    rows = ingest.run(IngestParams(workers=1), images, labels, out)
    assert rows[0]["status"] == "error" and "disk full" in rows[0]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    monkeypatch.undo()

    ingest.run(IngestParams(workers=1), images, labels, out)
    old_image, _ = load_case(out)
    old = np.asanyarray(old_image.dataobj).copy()
    # Re-ingesting changed input swaps the whole folder in; nothing stale or temporary remains.
    make_case(images, labels, seed=5)
    ingest.run(IngestParams(workers=1), images, labels, out)
    new_image, _ = load_case(out)
    assert not np.array_equal(np.asanyarray(new_image.dataobj), old)
    assert sorted(p.name for p in out.iterdir()) == ["PANCREAS_0001", "manifest.json"]
    assert sorted(p.name for p in (out / "PANCREAS_0001").iterdir()) == [
        "image.nii.gz",
        "label.nii.gz",
    ]
