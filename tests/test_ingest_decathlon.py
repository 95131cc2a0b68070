"""``ingest.source: decathlon``: a Medical Segmentation Decathlon layout through ``gvae ingest``.

The cohort is written at test time from the real TCIA patient (Roth et al. 2016,
doi:10.7937/K9/TCIA.2016.tNB1kqBU, CC BY 3.0): imagesTr/ holds its HU volume as NIfTI, labelsTr/
its label re-saved in another voxel order with part of the pancreas relabelled 2 (tumour).
pancreas_002's image is a crop that the full label reaches beyond (rejected), pancreas_003 has
no label file, and a macOS "._" file sits beside the images as in the Decathlon archives.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.cohort import ingest
from pipeline.cohort.sources.decathlon import DecathlonCase, decathlon_label, find_decathlon_cases
from pipeline.io.dicom_read import read_series
from pipeline.io.nifti import write_nifti
from pipeline.params.ingest import DecathlonParams, IngestParams

CASE = "PANCREAS_0001"


@pytest.fixture(scope="module")
def cohort(real_data_dir, tmp_path_factory):
    """A Decathlon-layout task folder built from the real patient, ingested once."""
    src = real_data_dir / "pancreas_ct"
    hu, affine, meta = read_series(src / "Pancreas-CT" / CASE)
    tcia = nib.load(src / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz")
    truth = np.asanyarray(tcia.dataobj)[:, :, np.asarray(meta.instance_numbers) - 1] > 0
    task = tmp_path_factory.mktemp("Task07_Pancreas")
    images, labels = task / "imagesTr", task / "labelsTr"
    images.mkdir(), labels.mkdir()
    values = np.asanyarray(tcia.dataobj).astype(np.uint8)
    values[:, :, 150:][values[:, :, 150:] > 0] = 2  # a "tumour" in the lower part of the gland
    moved = nib.Nifti1Image(values, tcia.affine)
    start = nib.orientations.io_orientation(moved.affine)
    target = nib.orientations.axcodes2ornt(("S", "P", "R"))  # another voxel order
    moved = moved.as_reoriented(nib.orientations.ornt_transform(start, target))
    write_nifti(images / "pancreas_001.nii.gz", hu, affine)
    nib.save(moved, labels / "pancreas_001.nii.gz")
    crop = affine.copy()
    crop[:3, 3] = affine[:3, :3] @ [0, 0, 120] + affine[:3, 3]  # slices 120.. only
    write_nifti(images / "pancreas_002.nii", hu[:, :, 120:], crop)
    nib.save(moved, labels / "pancreas_002.nii")
    write_nifti(images / "pancreas_003.nii", hu[:, :, :8], affine)
    (images / "._pancreas_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    out = task / "out"
    params = IngestParams(source="decathlon", workers=1)
    rows = ingest.run(params, images, labels, out)
    return {
        "rows": {r["case_id"]: r for r in rows},
        "out": out,
        "hu": hu,
        "affine": affine,
        "truth": truth,
        "only_1": values[:, :, np.asarray(meta.instance_numbers) - 1] == 1,
        "labels": labels,
        "images": images,
    }


@pytest.mark.real_data
def test_decathlon_case_is_written_like_a_tcia_case(cohort):
    row = cohort["rows"]["pancreas_001"]
    assert row["status"] == "ok", row
    assert set(row) == set(ingest.manifest_row("x")), "manifest keys differ from the TCIA source"
    assert 98.0 <= row["label_hu_mean"] <= 108.0 and row["label_hu_sd"] < 40.0, row
    assert row["label_placement"] == "exact" and row["label_voxels"] == 78329
    assert row["shape"] == [512, 512, 240]
    image = nib.load(cohort["out"] / "pancreas_001" / ingest.IMAGE_FILE)
    label = nib.load(cohort["out"] / "pancreas_001" / ingest.LABEL_FILE)
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    np.testing.assert_allclose(label.affine, cohort["affine"], atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), cohort["hu"])
    # Values 1 and 2 merged: 0 voxels differ from the pancreas on the CT grid.
    assert np.count_nonzero(np.asanyarray(label.dataobj) != cohort["truth"]) == 0
    manifest = json.loads((cohort["out"] / ingest.MANIFEST).read_text())
    assert [r["case_id"] for r in manifest] == ["pancreas_001", "pancreas_002", "pancreas_003"]


@pytest.mark.real_data
def test_label_reaching_outside_the_image_is_rejected_naming_it(cohort):
    row = cohort["rows"]["pancreas_002"]
    assert row["status"] == "error", row
    assert row["error"].startswith(str(cohort["labels"] / "pancreas_002.nii"))
    assert "beyond the CT volume" in row["error"]
    assert not (cohort["out"] / "pancreas_002").exists()


@pytest.mark.real_data
def test_missing_label_file_is_an_error_row(cohort):
    row = cohort["rows"]["pancreas_003"]
    assert row["status"] == "error" and "label file not found" in row["error"], row
    assert str(cohort["labels"] / "pancreas_003.nii") in row["error"]


@pytest.mark.real_data
def test_pancreas_values_choose_the_label_values(cohort):
    case = DecathlonCase(
        "pancreas_001",
        cohort["images"] / "pancreas_001.nii.gz",
        cohort["labels"] / "pancreas_001.nii.gz",
    )
    params = IngestParams(source="decathlon", decathlon=DecathlonParams(pancreas_values=(1,)))
    only_1, _ = decathlon_label(case, cohort["hu"].shape, cohort["affine"], params)
    assert 0 < np.count_nonzero(only_1) < np.count_nonzero(cohort["truth"])
    assert np.count_nonzero(only_1 != cohort["only_1"]) == 0
    with pytest.raises(ValueError, match=r"no voxel holds a pancreas value \[7\]"):
        params7 = IngestParams(decathlon=DecathlonParams(pancreas_values=(7,)))
        decathlon_label(case, cohort["hu"].shape, cohort["affine"], params7)


def test_hidden_files_are_skipped_and_empty_folders_named(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="no NIfTI images"):
        find_decathlon_cases(tmp_path / "imagesTr", tmp_path / "labelsTr")
    with pytest.raises(ValueError, match="images folder not found"):
        find_decathlon_cases(tmp_path / "nope", tmp_path / "labelsTr")


def test_pancreas_values_are_validated():
    with pytest.raises(ValueError, match="pancreas_values"):
        DecathlonParams(pancreas_values=(1, 1))
