"""Hospital exports of the real patient: a localizer and a thick reconstruction beside the thin
axial series in one folder, and a media (DICOMDIR) export with extension-less file names.

Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0). The check that the
right series was read is the one of test_real_pancreas.py: HU inside the pancreas label.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from pipeline.cohort import ingest
from pipeline.io.dicom_read import read_series
from pipeline.params.loader import IngestParams
from tests.dicom_variants import CASE, labels_dir, link_files, real_series_files, rewrite

pytestmark = pytest.mark.real_data

THICK_UID, SCOUT_UID = generate_uid(), generate_uid()


def _scout(ds, i):
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    ds.ImagePositionPatient = [0, -200 + 10 * i, 100]
    ds.SeriesDescription = "Topogram 0.6 T20f"
    ds.InstanceNumber = i + 1


def _thick(ds, i):
    ds.SeriesDescription = "Abdomen 2.0 thick"
    ds.InstanceNumber = i + 1


@pytest.fixture(scope="module")
def hospital(real_data_dir, tmp_path_factory):
    """The real series, a 2-image sagittal localizer and every 2nd slice as a thick series, all
    in ONE folder; returns (images root, the thin series read from the mirror)."""
    files = real_series_files(real_data_dir)
    root = tmp_path_factory.mktemp("hospital")
    folder = root / "images" / CASE / "study" / "mixed"
    link_files(files, folder)
    rewrite(files[:2], folder, _scout, SCOUT_UID, prefix="scout")
    rewrite(files[::2], folder, _thick, THICK_UID, prefix="thick")
    return root / "images", read_series(files[0].parent)


def _ingest(images, real_data_dir, out, **params):
    (row,) = ingest.run(IngestParams(workers=1, **params), images, labels_dir(real_data_dir), out)
    assert row["status"] == "ok", row
    assert 98.0 <= row["label_hu_mean"] <= 108.0 and row["label_hu_sd"] < 40.0, row
    return row, np.asanyarray(nib.load(out / CASE / "image.nii.gz").dataobj)


def test_thin_axial_series_is_chosen(hospital, real_data_dir, tmp_path):
    images, (thin_hu, thin_affine, thin_meta) = hospital
    row, hu = _ingest(images, real_data_dir, tmp_path / "out")
    assert row["series"] == {
        "uid": thin_meta.series_uid,
        "description": "Pancreas",
        "slices": 240,
        "spacing": [0.859375, 0.859375, 1.0],
    }
    reasons = {s["uid"]: s for s in row["skipped_series"]}
    assert set(reasons) == {SCOUT_UID, THICK_UID}
    assert "localizer" in reasons[SCOUT_UID]["reason"] and reasons[SCOUT_UID]["slices"] == 2
    assert "choice rule" in reasons[THICK_UID]["reason"]
    assert reasons[THICK_UID]["slices"] == 120 and reasons[THICK_UID]["slice_step_mm"] == 2.0
    assert int(np.count_nonzero(hu != thin_hu)) == 0  # voxel for voxel the plain read
    # A localizer and a thicker reconstruction are what they are, not defects.
    assert row["warning"] is None and not any("defect" in s for s in row["skipped_series"])


def test_broken_thin_series_loses_with_a_warning(real_data_dir, tmp_path):
    """A thin series with one slice missing is skipped as a defect; the intact thick series is
    read, and the manifest row warns, naming the broken series and its gap."""
    files = real_series_files(real_data_dir)
    folder = tmp_path / "images" / CASE / "study"
    link_files(files[:101] + files[102:], folder)  # instance 102 lost in the export
    rewrite(files[::2], folder, _thick, THICK_UID, prefix="thick")
    thin_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    row, _ = _ingest(tmp_path / "images", real_data_dir, tmp_path / "out")
    assert row["series"]["uid"] == THICK_UID
    (broken,) = row["skipped_series"]
    assert broken["uid"] == thin_uid and broken["defect"] is True and broken["slices"] == 239
    assert row["warning"].startswith(f"{folder.parent}: broken series skipped, volume read from")
    assert thin_uid in row["warning"] and broken["reason"] in row["warning"]


def test_sagittal_non_localizer_is_skipped_as_not_axial(real_data_dir, tmp_path):
    files = real_series_files(real_data_dir)
    folder = tmp_path / CASE
    link_files(files[:3], folder)

    def sagittal(ds, i):
        _scout(ds, i)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # mislabelled, caught by orientation

    rewrite(files[:3], folder, sagittal, SCOUT_UID, prefix="sag")
    _, _, meta = read_series(folder)
    (skipped,) = meta.skipped_series
    assert skipped["uid"] == SCOUT_UID and "sagittal orientation" in skipped["reason"]


def test_uid_override_picks_the_thick_series(hospital, real_data_dir, tmp_path):
    images, (thin_hu, _, thin_meta) = hospital
    series = {"uids": {CASE: THICK_UID}}
    row, hu = _ingest(images, real_data_dir, tmp_path / "out", series=series)
    assert row["series"]["uid"] == THICK_UID and row["series"]["slices"] == 120
    assert row["spacing"] == [0.859375, 0.859375, 2.0]
    assert thin_meta.series_uid in {s["uid"] for s in row["skipped_series"]}
    # Instances 1, 3, 5, ...: k = instance - 1 on the thin grid (the normal runs with them).
    np.testing.assert_array_equal(hu, thin_hu[:, :, ::2])


def test_description_override_picks_the_thick_series(hospital):
    # The read alone (the ingest around it is the uid test's): same series, same voxels.
    images, (thin_hu, _, thin_meta) = hospital
    hu, _, meta = read_series(images / CASE, description="(?i)thick")
    assert meta.series_uid == THICK_UID and meta.description == "Abdomen 2.0 thick"
    reasons = {s["uid"]: s["reason"] for s in meta.skipped_series}
    assert "does not match /(?i)thick/" in reasons[thin_meta.series_uid]
    assert "localizer" in reasons[SCOUT_UID]
    np.testing.assert_array_equal(hu, thin_hu[:, :, ::2])


def test_override_naming_a_localizer_is_an_error(hospital, real_data_dir, tmp_path):
    images, _ = hospital
    params = IngestParams(workers=1, series={"uids": {CASE: SCOUT_UID}})
    (row,) = ingest.run(params, images, labels_dir(real_data_dir), tmp_path / "out")
    assert row["status"] == "error"
    assert f"series {SCOUT_UID} (params) is not usable: localizer" in row["error"]


def test_media_export_with_dicomdir(hospital, real_data_dir, tmp_path):
    """A FileSet (PS3.10 media) export: IM-style names without extension in nested folders, a
    DICOMDIR and a README beside them; read by content, the same volume as the plain read."""
    _, (thin_hu, thin_affine, _) = hospital
    fs = FileSet()
    for path in real_series_files(real_data_dir):
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = 2  # type 1 in a SERIES record (PS3.3 F.5); TCIA left it empty
        fs.add(ds)
    root = tmp_path / "images" / CASE
    fs.write(root)
    (root / "README.TXT").write_text("Exported by a PACS viewer. Insert the CD and run.\n")
    names = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert "DICOMDIR" in names and not any("." in n for n in names if n != "README.TXT")
    row, hu = _ingest(tmp_path / "images", real_data_dir, tmp_path / "out")
    assert row["series"]["slices"] == 240 and row["skipped_series"] == []
    reasons = {p["file"].rsplit("/", 1)[-1]: p["reason"] for p in row["skipped_files"]}
    assert set(reasons) == {"DICOMDIR", "README.TXT"}
    assert "DICOMDIR" in reasons["DICOMDIR"] and reasons["README.TXT"] == "not a DICOM file"
    assert int(np.count_nonzero(hu != thin_hu)) == 0
