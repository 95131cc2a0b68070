"""PHI test: the real Pancreas-CT patient through ingest -> slices -> tiny training -> generate ->
export; no identifier, UID, date or institution of the patient reaches any exported file.

Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0). The one mirrored patient
is the whole training split, so no unseen real slice exists to calibrate the near-copy gate: the
export runs with --allow-near-copies and the receipt must say the gate did not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipeline.cli import main
from pipeline.params.loader import deep_merge

from .conftest import REPO
from .export_fixtures import dciodvfy
from .test_export import DCIODVFY_EXPECTED

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
CASE = "PANCREAS_0001"
# Standard UIDs (SOP classes, transfer syntaxes) are constants of DICOM, not of the patient.
DICOM_ROOT = "1.2.840.10008."
IDENTIFYING = {
    "PatientID",
    "PatientName",
    "OtherPatientIDs",
    "StudyID",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "Manufacturer",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "ImplementationVersionName",
    "ReferringPhysicianName",
    "OperatorsName",
}
# Shorter values (e.g. "NIH") are compared as whole values: as substrings they would match by
# chance inside long random UIDs.
SUBSTRING_MIN = 8
# The one patient is the whole training split; 32 px slices and 2 training steps.
TINY = {
    "profile": "cpu",
    "slices": {
        "size": 32,
        "negative_fraction": 0.05,
        "shard_size": 64,
        "split": {"cases": {"train": [CASE], "val": [], "test": []}},
    },
    "ct": {"train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "sample_every": 2}},
}


def _elements(ds: Dataset):
    """Every data element of ``ds``, file meta included, recursing into sequences."""
    meta = getattr(ds, "file_meta", None)
    for elem in [*(meta or []), *ds]:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)


def _texts(elem) -> list[str]:
    values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
    out = []
    for v in values:
        if isinstance(v, bytes):
            v = v.decode("latin-1")
        out.append(str(v).strip(" \x00"))
    return [t for t in out if t]


def _source_identifiers(series: Path) -> set[str]:
    """Identifiers, UIDs, dates, times and institution/device values of every source file."""
    found = {"PANCREAS0001", CASE}  # also in the TCIA folder names
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for elem in _elements(ds):
            if elem.VR == "SQ" or elem.value in (None, "", b""):
                continue
            wanted = elem.VR in ("UI", "DA", "DT", "TM", "PN") or elem.keyword in IDENTIFYING
            if wanted or elem.tag.is_private:
                found.update(t for t in _texts(elem) if not t.startswith(DICOM_ROOT))
    return found


def _leaks(values: list[str], identifiers: set[str]) -> set[str]:
    long_ids = {i for i in identifiers if len(i) >= SUBSTRING_MIN}
    short_ids = identifiers - long_ids
    return {i for v in values for i in long_ids if i in v} | (set(values) & short_ids)


def test_exported_files_carry_nothing_of_the_source_patient(real_data_dir, tmp_path):
    src = real_data_dir / "pancreas_ct"
    [series] = sorted(p.parent for p in (src / "Pancreas-CT").rglob("1-001.dcm"))
    identifiers = _source_identifiers(series)
    assert {"PANCREAS_0001", "NIH", "20151124"} <= identifiers and len(identifiers) > 240

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY))
    )
    p = ["--params", str(params)]
    volumes, slices, run, syn, out = (tmp_path / n for n in ("vol", "slices", "run", "syn", "out"))
    images, labels = src / "Pancreas-CT", src / "TCIA_pancreas_labels-02-05-2017"
    args = ["--images", str(images), "--labels", str(labels), "--workers", "1"]
    assert main(["ingest", *p, *args, "--out", str(volumes)]) == 0
    assert main(["slices", *p, "--input", str(volumes), "--out", str(slices)]) == 0
    train = ["--model", "gvae", "--dataset", "pancreas", "--data", str(slices), "--no-progress"]
    assert main(["train", *p, *train, "--out", str(run)]) == 0
    assert main(["generate", *p, "--run", str(run), "--out", str(syn), "--n", "6"]) == 0
    kept = json.loads((syn / "summary.json").read_text())["kept"]
    assert kept >= 1
    # No --slices: the export finds the training slices through the run's data.json. Two
    # training steps draw no pancreas yet: the plausibility gate would refuse the masks.
    export = ["--synthetic", str(syn), "--out", str(out), "--n", str(kept)]
    assert main(["export", *p, *export, "--allow-near-copies", "--allow-implausible"]) == 0

    receipt = json.loads((out / "receipt.json").read_text())
    assert "no real test or val slices" in receipt["near_copy_gate"]["note"]
    assert receipt["plausibility_gate"]["real_masks"]["masks"] > 0  # the patient's own masks
    assert receipt["source"]["model_version"].startswith("checkpoint sha256:")
    files = [out / r["file"] for r in receipt["instances"]]
    assert len(files) == 2 * kept
    for path in files:
        ds = pydicom.dcmread(path)
        values = [t for e in _elements(ds) if e.keyword != "PixelData" for t in _texts(e)]
        assert values and not _leaks(values, identifiers), path
        # The whole file as bytes, pixel data included, for the long identifiers.
        blob = path.read_bytes().decode("latin-1")
        assert not {i for i in identifiers if len(i) >= SUBSTRING_MIN and i in blob}, path
        assert ds.SyntheticData == "YES" and ds.PatientIdentityRemoved == "YES"
        assert dciodvfy(path)[1] == DCIODVFY_EXPECTED, path
    # What the gate let through on request is said in the files (the PHI scan covers it too).
    for row in receipt["instances"]:
        comments = pydicom.dcmread(out / row["file"]).ImageComments
        assert ("IMPLAUSIBLE pancreas mask" in comments) == bool(row["implausible"])
    # The scan itself finds what it looks for, deep in a sequence too.
    source_uid = pydicom.dcmread(series / "1-001.dcm", stop_before_pixels=True).StudyInstanceUID
    planted = pydicom.dcmread(files[-1])
    planted.ContributingEquipmentSequence[0].InstitutionName = "NIH"
    planted.ContributingEquipmentSequence[0].ContributionDescription = f"from {source_uid}"
    values = [t for e in _elements(planted) if e.keyword != "PixelData" for t in _texts(e)]
    assert _leaks(values, identifiers) == {"NIH", source_uid}
    text = (out / "receipt.json").read_text()
    assert not {i for i in identifiers if len(i) >= SUBSTRING_MIN and i in text}
