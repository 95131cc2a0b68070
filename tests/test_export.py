"""``gvae export``: the DICOM content of an exported synthetic set, its validation by dicom3tools
and dcmtk, the privacy gate, and the CLI's errors. PACS delivery is in test_export_pacs.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.cohort.slicing import window_hu
from pipeline.export.dicom_set import HU_OFFSET, PANCREAS_RGB, hu_to_stored, unwindow_hu
from pipeline.export.privacy import select_slices
from pipeline.io.shards import load_slices
from pipeline.params.loader import ParamsError, load_section

from .conftest import REPO
from .ct_fixtures import toy_pairs, write_toy_slices
from .export_fixtures import WINDOW, dciodvfy, require_tool, write_synthetic_set

SPLITS = {
    "train": ["PANCREAS_0001", "PANCREAS_0002"],
    "val": ["PANCREAS_0003"],
    "test": ["PANCREAS_0004", "PANCREAS_0005"],
}
N = 6
# dciodvfy of Debian bookworm (dicom3tools 2022) predates Synthetic Data (0008,001C): these
# four messages, all about that one attribute, are the whole of its output besides the IOD name.
DCIODVFY_EXPECTED = {
    "(0x0008,0x001c)  ?  - Warning - Unrecognized tag - assuming explicit value representation OK",
    "Error - Attribute with an even group number is not a recognized standard attribute - "
    "(0x0008,0x001c)  ?",
    "Warning - Attribute is not present in standard DICOM IOD - (0x0008,0x001c)  ?",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - "
    "this is a Standard Extended SOP Class",
}


def _export(*args: str) -> int:
    return main(["export", *args])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Real slices, a synthetic set with two exact copies of training slices, its export."""
    root = tmp_path_factory.mktemp("export")
    slices = write_toy_slices(root / "slices", SPLITS, per_case=6, size=32)
    train, train_mask, _ = load_slices(slices, "train")
    image, mask = toy_pairs(10, 32, seed=99)
    image[1], mask[1] = train[3], train_mask[3]  # memorized training slices
    image[4], mask[4] = train[7], train_mask[7]
    mask[5] = 0  # an empty mask: the plausibility gate refuses it
    syn = write_synthetic_set(root / "syn", image, mask, trained_on=SPLITS["train"])
    out = root / "out"
    assert (
        _export("--synthetic", str(syn), "--out", str(out), "--n", str(N), "--slices", str(slices))
        == 0
    )
    receipt = json.loads((out / "receipt.json").read_text())
    files = {r["file"]: pydicom.dcmread(out / r["file"]) for r in receipt["instances"]}
    return {
        "root": root,
        "slices": slices,
        "syn": syn,
        "image": image,
        "mask": mask,
        "out": out,
        "receipt": receipt,
        "files": files,
    }


def test_unwindow_inverts_window_hu():
    hu = np.linspace(-160, 240, 401)
    back = unwindow_hu(window_hu(hu, 40.0, 400.0), 40.0, 400.0)
    np.testing.assert_allclose(back, hu, atol=1e-3)
    # Clipped values stay at the window's edges; the stored values hold whole HU.
    assert unwindow_hu(np.array([-1.5, 1.5]), 40.0, 400.0).tolist() == [-160.0, 240.0]
    assert hu_to_stored(np.array([-160.4, 239.6])).tolist() == [-160 + HU_OFFSET, 240 + HU_OFFSET]
    with pytest.raises(ValueError, match="do not fit"):
        hu_to_stored(np.array([-2000.0]))
    with pytest.raises(ValueError, match="width"):
        unwindow_hu(np.zeros(2), 40.0, 0.0)


def test_select_slices():
    flags = np.array([False, True, False, True, False, False])
    sel = select_slices(flags, 6, 3, allow=False)
    assert (sel.chosen, sel.refused, sel.allowed) == ([0, 2, 4], [1, 3], [])
    sel = select_slices(flags, 6, 3, allow=True)
    assert (sel.chosen, sel.refused, sel.allowed) == ([0, 1, 2], [], [1])
    with pytest.raises(ValueError, match="only 4 of the 6 synthetic slices pass"):
        select_slices(flags, 6, 5, allow=False)
    with pytest.raises(ValueError, match="holds 6 slices, 7 requested"):
        select_slices(flags, 6, 7, allow=True)
    with pytest.raises(ValueError, match="did not run"):
        select_slices(None, 6, 3, allow=False)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("patient_name", "DOE^JANE", "export.patient_name: .*SYNTHETIC"),
        ("series_description", "CT abdomen", "export.series_description: .*SYNTHETIC"),
        ("calling_aet", "A" * 17, "export.calling_aet: .*AE title"),
        ("windows", [], "export.windows: .*at least one"),
        ("colour", "red", "unknown key 'export.colour'"),
        ("plausibility", {"max_share": 0}, "export.plausibility.max_share: .*greater than 0"),
        ("plausibility", {"empty": "maybe"}, "export.plausibility.empty: .*'refuse' or 'keep'"),
        ("plausibility", {"slack": 2}, "unknown key 'export.plausibility.slack'"),
    ],
)
def test_params_are_validated(tmp_path, key, value, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["export"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=message):
        load_section(path, "export")


def test_layout_and_receipt(toy):
    receipt, out = toy["receipt"], toy["out"]
    rows = receipt["instances"]
    assert [r["kind"] for r in rows] == ["image"] * N + ["segmentation"] * N
    assert (out / "contact_sheet.png").is_file() and receipt["contact_sheet"] == "contact_sheet.png"
    uids = [r["sop_instance_uid"] for r in rows]
    assert len(set(uids)) == 2 * N
    for row in rows:
        ds = toy["files"][row["file"]]
        assert (
            ds.SOPInstanceUID == row["sop_instance_uid"] == ds.file_meta.MediaStorageSOPInstanceUID
        )
        assert ds.SOPClassUID == row["sop_class_uid"] and row["pacs"] == {}
    images = {r["instance_number"]: r for r in rows if r["kind"] == "image"}
    for seg in (r for r in rows if r["kind"] == "segmentation"):
        assert seg["references"] == images[seg["instance_number"]]["sop_instance_uid"]
    # The gates refused the two copies and the empty mask; the next clean draws took their place.
    gate = receipt["near_copy_gate"]
    assert gate["ran"] and gate["calibrated_on"] == "real test split"
    assert [r["draw"] for r in gate["refused"]] == [1, 4]
    odd = receipt["plausibility_gate"]
    assert [(r["draw"], r["reason"]) for r in odd["refused"]] == [(5, "empty")]
    assert odd["refused_by_reason"] == {"empty": 1, "covers_image": 0, "area": 0, "components": 0}
    assert [r["draw"] for r in rows[:N]] == [0, 2, 3, 6, 7, 8]
    assert not any(r["near_copy"] or r["implausible"] for r in rows)
    # The receipt names no real case.
    assert "PANCREAS" not in (out / "receipt.json").read_text()


def test_every_instance_is_marked_synthetic(toy):
    study = toy["receipt"]["study"]
    for ds in toy["files"].values():
        assert ds.SyntheticData == "YES" and ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        assert "SYNTHETIC" in ds.SeriesDescription and "SYNTHETIC" in ds.StudyDescription
        assert "SYNTHETIC" in str(ds.PatientName) and ds.PatientID.startswith("SYNTHETIC-")
        assert ds.StudyInstanceUID == study["study_instance_uid"]
        assert ds.PatientID == study["patient_id"]
        synth = ds.ContributingEquipmentSequence[0]
        code = synth.PurposeOfReferenceCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
            "109100",
            "DCM",
            "Synthesizing Equipment",
        )
        assert synth.Manufacturer == "gvae-pipeline" and synth.ManufacturerModelName == "vae"
        assert synth.SoftwareVersions[0].startswith("gvae-pipeline ")
        # No acquisition, nothing copied: no acquisition equipment, institution or station.
        for item in ds.ContributingEquipmentSequence:
            assert item.PurposeOfReferenceCodeSequence[0].CodeValue != "109101"
        for keyword in ("InstitutionName", "StationName", "OtherPatientIDsSequence"):
            assert keyword not in ds
        assert ds.PatientBirthDate == "" and ds.PatientSex == ""


def test_images_are_hu_ct_slices_each_in_its_own_frame(toy):
    images = [ds for ds in toy["files"].values() if ds.Modality != "SEG"]
    draws = [r["draw"] for r in toy["receipt"]["instances"] if r["kind"] == "image"]
    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    # A full plane for the SEG readers, but no volume: every sample in a Frame of Reference of
    # its own (no shared coordinate system), all at one position (no extent to stack).
    assert len({ds.FrameOfReferenceUID for ds in images}) == len(images)
    for ds, draw in zip(images, draws, strict=True):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.SyntheticData == "YES"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        # Nothing acquired: no acquisition values, no patient position on a table.
        for keyword in ("KVP", "AcquisitionNumber", "PatientPosition"):  # type 2, present
            assert keyword in ds and ds[keyword].is_empty
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.ImagePositionPatient] == [-96.875, -96.875, 0.0]
        assert float(ds.SliceThickness) == 6.25 and ds.PositionReferenceIndicator == ""
        assert list(ds.PatientOrientation) == ["L", "P"]
        assert [float(v) for v in ds.PixelSpacing] == [6.25, 6.25]
        assert ds.RescaleType == "HU"
        assert [float(v) for v in ds.WindowCenter] == [40.0, 30.0]
        assert [float(v) for v in ds.WindowWidth] == [400.0, 150.0]
        assert list(ds.WindowCenterWidthExplanation) == ["ABDOMEN", "LIVER"]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.rint(unwindow_hu(toy["image"][draw, 0], WINDOW["level"], WINDOW["width"]))
        np.testing.assert_array_equal(hu, expected)


def test_segmentations_reference_their_images(toy):
    files = toy["files"]
    rows = toy["receipt"]["instances"]
    by_uid = {ds.SOPInstanceUID: ds for ds in files.values()}
    segs = [(r, files[r["file"]]) for r in rows if r["kind"] == "segmentation"]
    # One series per SEG: OHIF loads one SEG per series.
    assert len({ds.SeriesInstanceUID for _, ds in segs}) == N
    assert toy["receipt"]["study"]["seg_series_instance_uids"] == [
        ds.SeriesInstanceUID for _, ds in segs
    ]
    for row, seg in segs:
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
        # PS3.3 C.8.20.2 fixes a SEG's Image Type to DERIVED\PRIMARY.
        assert list(seg.ImageType) == ["DERIVED", "PRIMARY"]
        source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        ref = source.SourceImageSequence[0].ReferencedSOPInstanceUID
        image = by_uid[ref]
        assert ref == row["references"] and image.InstanceNumber == seg.InstanceNumber
        assert seg.SeriesNumber == 100 + seg.InstanceNumber
        assert seg.SeriesDescription.endswith(f"(image {seg.InstanceNumber})")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
        # The image's Frame of Reference and plane: the SEG lies on its image.
        assert seg.FrameOfReferenceUID == image.FrameOfReferenceUID
        shared = seg.SharedFunctionalGroupsSequence[0]
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        assert orientation == image.ImageOrientationPatient
        position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        assert position.ImagePositionPatient == image.ImagePositionPatient
        measures = shared.PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == [6.25, 6.25]
        assert float(measures.SliceThickness) == float(measures.SpacingBetweenSlices) == 6.25
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "15776009"
        lab = seg.SegmentSequence[0].RecommendedDisplayCIELabValue
        assert hd.color.CIELabColor.from_dicom_value(lab).to_rgb() == PANCREAS_RGB
        frame = seg.pixel_array.reshape(32, 32)
        np.testing.assert_array_equal(frame, toy["mask"][row["draw"], 0])


def test_dciodvfy_every_file(toy):
    for name, ds in toy["files"].items():
        iod, messages = dciodvfy(toy["out"] / name)
        assert iod == ("Segmentation" if ds.Modality == "SEG" else "CTImage"), name
        assert messages == DCIODVFY_EXPECTED, name


def test_dcm2pnm_renders_the_abdominal_window(toy, tmp_path):
    png = tmp_path / "render.png"
    src = toy["out"] / "dicom" / "image_0001.dcm"
    subprocess.run(
        [require_tool("dcm2pnm"), "+on", "+Wi", "1", str(src), str(png)], check=True, timeout=60
    )
    rendered = np.asarray(Image.open(png), dtype=float)
    assert rendered.shape == (32, 32) and rendered.std() > 20  # not blank
    # What the viewer shows is the synthetic slice in the abdominal window, the right way up.
    expected = (toy["image"][0, 0] + 1) / 2 * 255
    assert np.corrcoef(rendered.ravel(), expected.ravel())[0, 1] > 0.99


def test_allow_near_copies_exports_and_marks_them(toy, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--synthetic", str(toy["syn"]), "--out", str(out), "--n", "3"]
    assert _export(*args, "--slices", str(toy["slices"]), "--allow-near-copies") == 0
    assert "exporting 1 near-copies" in capsys.readouterr().out
    receipt = json.loads((out / "receipt.json").read_text())
    images = [r for r in receipt["instances"] if r["kind"] == "image"]
    assert [(r["draw"], r["near_copy"]) for r in images] == [(0, False), (1, True), (2, False)]
    assert [r["draw"] for r in receipt["near_copy_gate"]["exported_near_copies"]] == [1]
    # The files say so too, where a viewer shows it: they travel without the receipt.
    for row in receipt["instances"]:
        ds = pydicom.dcmread(out / row["file"])
        assert ds.SeriesDescription.startswith("[NEAR-COPIES] SYNTHETIC")
        warned = "WARNING: NEAR-COPY of a real training slice (distance 0.000" in ds.ImageComments
        assert warned == (row["draw"] == 1), row["file"]
        assert "--allow-near-copies" in ds.ImageComments or row["draw"] != 1


def test_gate_refusal_message_and_shortage(toy, tmp_path, capsys):
    args = ["--synthetic", str(toy["syn"]), "--slices", str(toy["slices"])]
    assert _export(*args, "--out", str(tmp_path / "a"), "--n", "3") == 0
    said = capsys.readouterr().out
    assert "refused 1 near-copies of real training slices" in said and "draw 1 (0.000)" in said
    assert _export(*args, "--out", str(tmp_path / "b"), "--n", "9") == 2
    err = capsys.readouterr().err
    assert "only 7 of the 10 synthetic slices pass the near-copy and plausibility gates" in err
    assert not (tmp_path / "b").exists()


def test_gate_needs_the_training_slices(toy, tmp_path, capsys):
    args = ["--synthetic", str(toy["syn"]), "--out", str(tmp_path / "out"), "--n", "2"]
    assert _export(*args) == 2
    assert "pass --slices DIR" in capsys.readouterr().err
    assert _export(*args, "--allow-near-copies") == 0
    receipt = json.loads((tmp_path / "out" / "receipt.json").read_text())
    assert not receipt["near_copy_gate"]["ran"] and "--slices" in receipt["near_copy_gate"]["note"]
    assert all(r["near_copy"] is None for r in receipt["instances"])


def test_gate_rejects_other_slices(toy, tmp_path, capsys):
    other = write_toy_slices(tmp_path / "other", SPLITS, per_case=2, size=16)
    args = ["--synthetic", str(toy["syn"]), "--out", str(tmp_path / "out"), "--n", "2"]
    assert _export(*args, "--slices", str(other)) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "not the slices the generator was trained on" in err
    strangers = {"train": ["PANCREAS_0007"], "val": [], "test": ["PANCREAS_0008"]}
    other = write_toy_slices(tmp_path / "strangers", strangers, per_case=2, size=32)
    assert _export(*args, "--slices", str(other)) == 2
    assert "trained on 2 case(s) that are not in this folder's train split" in (
        capsys.readouterr().err
    )


def test_training_slices_and_model_version_come_from_the_run(toy, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"weights")
    (run / "data.json").write_text(json.dumps({"slices": str(toy["slices"])}))
    syn = write_synthetic_set(
        tmp_path / "syn", toy["image"], toy["mask"], run=run, trained_on=SPLITS["train"]
    )
    assert _export("--synthetic", str(syn), "--out", str(tmp_path / "out"), "--n", "2") == 0
    receipt = json.loads((tmp_path / "out" / "receipt.json").read_text())
    assert receipt["near_copy_gate"]["ran"]
    version = f"checkpoint sha256:{hashlib.sha256(b'weights').hexdigest()[:16]}"
    assert receipt["source"]["model_version"] == version
    ds = pydicom.dcmread(tmp_path / "out" / receipt["instances"][0]["file"])
    assert version in list(ds.ContributingEquipmentSequence[0].SoftwareVersions)


def test_cli_errors(toy, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert _export("--out", out) == 2
    assert "give --synthetic DIR" in capsys.readouterr().err
    assert _export("--synthetic", str(toy["syn"]), "--out", out, "--aet", "X") == 2
    assert "need --pacs" in capsys.readouterr().err
    assert _export("--out", str(toy["out"]), "--force") == 2
    assert "need --pacs" in capsys.readouterr().err
    assert _export("--out", str(toy["out"]), "--pacs", "localhost") == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert _export("--out", str(toy["out"]), "--pacs", "127.0.0.1:104", "--aet", "A" * 17) == 2
    assert "--aet: not a DICOM AE title" in capsys.readouterr().err
    assert _export("--out", out, "--pacs", "127.0.0.1:104") == 2
    assert "no receipt.json" in capsys.readouterr().err
    assert _export("--synthetic", str(toy["syn"]), "--out", out, "--n", "0") == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    args = ["--synthetic", str(toy["root"] / "nowhere"), "--out", out]
    assert _export(*args) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "run `gvae generate` first" in err


def test_a_folder_of_something_else_is_not_replaced(toy, tmp_path, capsys):
    (tmp_path / "results.csv").write_text("precious")
    args = ["--synthetic", str(toy["syn"]), "--out", str(tmp_path), "--allow-near-copies"]
    assert _export(*args, "--n", "2") == 2
    assert "is not an export folder" in capsys.readouterr().err
    assert (tmp_path / "results.csv").read_text() == "precious"


def test_a_delivered_export_is_not_rebuilt(toy, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(toy["out"], out)
    receipt = json.loads((out / "receipt.json").read_text())
    receipt["instances"][0]["pacs"] = {"PACS@host:104": {"status": "stored"}}
    (out / "receipt.json").write_text(json.dumps(receipt))
    args = ["--synthetic", str(toy["syn"]), "--out", str(out), "--slices", str(toy["slices"])]
    assert _export(*args) == 2
    err = capsys.readouterr().err
    assert "already delivered (1 at PACS@host:104)" in err and "--pacs HOST:PORT" in err
    assert json.loads((out / "receipt.json").read_text()) == receipt  # untouched
