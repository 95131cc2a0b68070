"""Bad input to ``gvae ingest``: each error names the file and the problem, and the good case
in the same run is still written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline import cli
from pipeline.cohort import ingest
from pipeline.io.dicom_write import SeriesHeader, write_ct_series
from pipeline.params.loader import IngestParams
from tests.test_ingest import make_case

GOOD, BAD = "PANCREAS_0001", "PANCREAS_0002"


@pytest.fixture
def dirs(tmp_path):
    """A good case and a second case (to be broken by each test), both valid to begin with."""
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    make_case(images, labels, case_id=GOOD, seed=1)
    bad = make_case(images, labels, case_id=BAD, seed=2)
    return images, labels, out, bad


def run_and_split(images, labels, out, capsys, **params) -> tuple[str, str]:
    """Run the stage in-process; check the good case; return (bad case's error, stderr)."""
    rows = ingest.run(IngestParams(workers=1, **params), images, labels, out)
    by_id = {r["case_id"]: r for r in rows}
    assert by_id[GOOD]["status"] == "ok", by_id[GOOD]
    assert (out / GOOD / "image.nii.gz").is_file() and (out / GOOD / "label.nii.gz").is_file()
    assert by_id[BAD]["status"] == "error"
    assert not (out / BAD).exists(), "a failed case must leave no folder behind"
    assert json.loads((out / "manifest.json").read_text()) == rows
    stderr = capsys.readouterr().err
    assert by_id[BAD]["error"] in stderr
    return by_id[BAD]["error"], stderr


def edit_slice(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_truncated_file(dirs, capsys):
    images, labels, out, bad = dirs
    victim = bad.series_dir / "1-004.dcm"
    victim.write_bytes(victim.read_bytes()[:-300])
    error, _ = run_and_split(images, labels, out, capsys)
    assert str(victim) in error and "truncated" in error


def test_file_that_is_not_dicom(dirs, capsys):
    # Read by content: a stray file is skipped with its reason in the manifest, not an error.
    images, labels, out, bad = dirs
    stray = bad.series_dir / "notes.txt"
    stray.write_text("scanner log: nothing to see here\n")
    rows = {r["case_id"]: r for r in ingest.run(IngestParams(workers=1), images, labels, out)}
    assert rows[BAD]["status"] == "ok", rows[BAD]
    assert rows[BAD]["skipped_files"] == [{"file": str(stray), "reason": "not a DICOM file"}]
    assert rows[GOOD]["skipped_files"] == []


def test_missing_slice_in_the_middle(dirs, capsys):
    images, labels, out, bad = dirs
    (bad.series_dir / "1-004.dcm").unlink()
    error, _ = run_and_split(images, labels, out, capsys)
    assert "missing slice" in error
    assert "1-003.dcm" in error and "1-005.dcm" in error


def test_two_series_and_a_missing_override(dirs, capsys):
    # Two CT series share the case folder: the rule picks the 8-slice one; a SeriesInstanceUID
    # override naming neither is an error that lists both.
    images, labels, out, bad = dirs
    first_uid = pydicom.dcmread(bad.series_dir / "1-001.dcm").SeriesInstanceUID
    other = SeriesHeader(patient_id=BAD, pixel_spacing=(0.8, 0.7), slice_step_mm=1.5,
                         slice_thickness_mm=1.5)  # fmt: skip
    write_ct_series(bad.series_dir.parent / "9.9.9-other", np.zeros((3, 24, 32)), other)
    rows = {r["case_id"]: r for r in ingest.run(IngestParams(workers=1), images, labels, out)}
    assert rows[BAD]["status"] == "ok" and rows[BAD]["series"]["uid"] == first_uid
    assert [s["uid"] for s in rows[BAD]["skipped_series"]] == [other.series_uid]
    assert "choice rule" in rows[BAD]["skipped_series"][0]["reason"]
    series = {"uids": {BAD: "1.2.3.999"}}
    error, _ = run_and_split(images, labels, out, capsys, series=series)
    assert str(images / BAD) in error and "series 1.2.3.999 (params) not found" in error
    assert first_uid in error and other.series_uid in error


def test_non_ct_modality(dirs, capsys):
    images, labels, out, bad = dirs
    victim = bad.series_dir / "1-002.dcm"
    edit_slice(victim, Modality="MR")
    error, _ = run_and_split(images, labels, out, capsys)
    assert str(victim) in error and "Modality is 'MR'" in error


@pytest.mark.parametrize(
    "rule,expected",
    [("affine", "reaches 6.4 mm beyond the CT volume"), ("instance", "does not match image shape")],
)
def test_label_shape_mismatch(dirs, capsys, rule, expected):
    images, labels, out, bad = dirs
    # Rows and columns swapped under the CT's own affine: placed by it, the grid sticks out by
    # 8 rows x 0.8 mm; paired by InstanceNumber, the shapes differ.
    affine = nib.load(bad.label_path).affine
    nib.save(nib.Nifti1Image(np.ones((24, 32, 8), np.uint8), affine), bad.label_path)
    error, _ = run_and_split(images, labels, out, capsys, label_geometry=rule)
    assert str(bad.label_path) in error and expected in error
    assert "(24, 32, 8)" in error and "(32, 24, 8)" in error


def test_label_missing(dirs, capsys):
    images, labels, out, bad = dirs
    bad.label_path.unlink()
    error, _ = run_and_split(images, labels, out, capsys)
    assert str(bad.label_path) in error and "label file not found" in error


def test_label_with_zero_voxels(dirs, capsys):
    images, labels, out, bad = dirs
    nib.save(nib.Nifti1Image(np.zeros((32, 24, 8), np.uint8), np.eye(4)), bad.label_path)
    error, _ = run_and_split(images, labels, out, capsys)
    assert str(bad.label_path) in error and "no non-zero voxels" in error


def test_duplicate_instance_numbers(dirs, capsys):
    # Only pairing by InstanceNumber needs them; placing by the affine ignores them.
    images, labels, out, bad = dirs
    edit_slice(bad.series_dir / "1-005.dcm", InstanceNumber=4)
    error, _ = run_and_split(images, labels, out, capsys, label_geometry="instance")
    assert str(bad.label_path) in error and "not one contiguous run" in error


def test_output_folder_not_writable(dirs, capsys):
    images, labels, _, _ = dirs
    # A regular file where a parent folder should be stops even root from creating the folder.
    blocker = images.parent / "blocker"
    blocker.write_text("")
    out = blocker / "out"
    with pytest.raises(PermissionError, match="cannot create output folder") as info:
        ingest.run(IngestParams(workers=1), images, labels, out)
    assert str(out) in str(info.value)
    params = images.parent / "params.yaml"
    params.write_text("ingest:\n  workers: 1\n")
    argv = ["ingest", "--params", str(params), "--images", str(images)]
    code = cli.main([*argv, "--labels", str(labels), "--out", str(out)])
    assert code != 0 and f"{out}: cannot create output folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root ignores permission bits; the case above covers root
        locked = images.parent / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable") as info:
            ingest.run(IngestParams(workers=1), images, labels, locked)
        assert str(locked) in str(info.value)


@pytest.mark.parametrize("strict", [True, False])
def test_strict_exit_code(dirs, capsys, strict):
    images, labels, out, bad = dirs
    (bad.series_dir / "1-004.dcm").unlink()
    params = images.parent / "params.yaml"
    params.write_text("ingest:\n  workers: 2\n  strict: false\n")
    argv = ["ingest", "--params", str(params), "--images", str(images), "--labels", str(labels)]
    code = cli.main([*argv, "--out", str(out), *(["--strict"] if strict else [])])
    assert code == (1 if strict else 0)
    assert (out / GOOD / "image.nii.gz").is_file() and not (out / BAD).exists()
    rows = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "missing slice" in capsys.readouterr().err
