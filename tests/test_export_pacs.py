"""PACS delivery of an exported set: a real Orthanc on loopback (round trip, down, association
refused, instances refused for lack of storage, retry), and a pynetdicom peer that aborts the
association mid-transfer (what arrived, what is unconfirmed, what was never sent)."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.cli import main
from pipeline.export import pacs

from .conftest import REPO
from .ct_fixtures import toy_pairs
from .export_fixtures import ORTHANC_AET, SENDER_AET, Orthanc, free_port, write_synthetic_set

N = 4


@pytest.fixture
def exported(tmp_path):
    """A built export of N images + N SEGs (gate skipped: delivery is what is tested here)."""
    image, mask = toy_pairs(N, 32, seed=5)
    syn = write_synthetic_set(tmp_path / "syn", image, mask)
    out = tmp_path / "out"
    args = ["export", "--synthetic", str(syn), "--out", str(out), "--allow-near-copies"]
    assert main([*args, "--n", str(N)]) == 0
    return out


@pytest.fixture
def orthanc(tmp_path):
    """A stopped Orthanc with its own folder and free loopback ports; stopped by PID at the end."""
    server = Orthanc(free_port(), free_port(), tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


def _receipt(out):
    return json.loads((out / "receipt.json").read_text())


def _send(out, port, called=ORTHANC_AET, calling=SENDER_AET) -> int:
    args = ["export", "--out", str(out), "--pacs", f"127.0.0.1:{port}"]
    return main([*args, "--aet", calling, "--called-aet", called])


def _statuses(out, port, called=ORTHANC_AET) -> list[str]:
    key = f"{called}@127.0.0.1:{port}"
    return [r["pacs"][key]["status"] for r in _receipt(out)["instances"]]


def _orthanc_sop_uids(server: Orthanc) -> set[str]:
    return {server.get(f"/instances/{i}/tags?short")["0008,0018"] for i in server.get("/instances")}


def test_round_trip_through_orthanc(exported, orthanc, capsys):
    orthanc.start()
    assert orthanc.get("/system")["DicomAet"] == ORTHANC_AET
    assert _send(exported, orthanc.dicom_port) == 0
    assert f"holds all {2 * N} instances" in capsys.readouterr().out
    receipt = _receipt(exported)
    key = f"{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}"
    assert all(r["pacs"][key]["status_code"] == "0x0000" for r in receipt["instances"])
    # Read the study back through the REST API.
    study_uid = receipt["study"]["study_instance_uid"]
    [study] = [
        s
        for s in orthanc.get("/studies?expand")
        if s["MainDicomTags"]["StudyInstanceUID"] == study_uid
    ]
    assert study["PatientMainDicomTags"]["PatientID"] == receipt["study"]["patient_id"]
    assert _orthanc_sop_uids(orthanc) == {r["sop_instance_uid"] for r in receipt["instances"]}
    series = orthanc.get(f"/studies/{study['ID']}/series?expand")
    by_modality = sorted((s["MainDicomTags"]["Modality"], len(s["Instances"])) for s in series)
    assert by_modality == [("CT", N)] + [("SEG", 1)] * N  # one SEG series per image
    assert all("SYNTHETIC" in s["MainDicomTags"]["SeriesDescription"] for s in series)
    for instance in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{instance}/tags?short")
        assert tags["0008,001c"] == "YES"  # Synthetic Data kept
    # A second send finds nothing missing and sends nothing.
    assert _send(exported, orthanc.dicom_port) == 0
    assert receipt["deliveries"][-1]["attempted"] == 2 * N
    assert _receipt(exported)["deliveries"][-1]["attempted"] == 0


def test_pacs_down_and_association_refused(exported, orthanc, capsys):
    down = free_port()  # nothing listens there
    assert _send(exported, down) == 2
    err = capsys.readouterr().err
    assert f"PACS 127.0.0.1:{down} accepted no connection" in err
    assert f"0 of {2 * N} instances are stored" in err and "sends only the missing ones" in err
    assert set(_statuses(exported, down)) == {"not sent"}

    orthanc.start()
    port = orthanc.dicom_port
    assert _send(exported, port, called="NOT_ORTHANC") == 2
    err = capsys.readouterr().err
    assert "refused the association" in err and "Called AE title not recognised" in err
    assert set(_statuses(exported, port, called="NOT_ORTHANC")) == {"not sent"}
    assert _send(exported, port, calling="STRANGER") == 2
    assert "Calling AE title not recognised" in capsys.readouterr().err
    assert orthanc.get("/instances") == []
    deliveries = _receipt(exported)["deliveries"]
    assert [d["stored"] for d in deliveries] == [0, 0, 0]
    assert all(d["missing_after"] == 2 * N and d["error"] for d in deliveries)


def test_unknown_sender_aborted_at_the_first_store_is_named(exported, orthanc, capsys):
    # Orthanc's default DicomAlwaysAllowEcho lets any AE title associate (for C-ECHO), then
    # aborts at the first C-STORE from a sender it does not know: that is no timeout.
    orthanc.start(extra={"DicomAlwaysAllowEcho": True})
    assert _send(exported, orthanc.dicom_port, calling="STRANGER") == 2
    err = capsys.readouterr().err
    assert "the PACS ended the association (A-ABORT from the PACS" in err
    assert "stores nothing from calling AE title 'STRANGER'" in err and "--aet" in err
    assert "no answer to the C-STORE" not in err
    statuses = _statuses(exported, orthanc.dicom_port)
    assert statuses[0] == "unconfirmed" and set(statuses[1:]) == {"not sent"}
    assert orthanc.get("/instances") == []


def test_unresolvable_host_is_named_and_recorded(exported, capsys):
    host = "gvae-no-such-host.invalid"  # RFC 2606: .invalid never resolves
    assert main(["export", "--out", str(exported), "--pacs", f"{host}:104"]) == 2
    err = capsys.readouterr().err
    assert f"PACS host '{host}' not found" in err and "check the host in --pacs" in err
    [attempt] = _receipt(exported)["deliveries"]
    assert attempt["destination"] == f"ANY-SCP@{host}:104"
    assert host in attempt["error"] and (attempt["attempted"], attempt["stored"]) == (2 * N, 0)
    rows = _receipt(exported)["instances"]
    assert {r["pacs"][attempt["destination"]]["status"] for r in rows} == {"not sent"}


def test_retry_asks_the_pacs_and_resends_what_it_lost(exported, orthanc, capsys):
    orthanc.start()
    port = orthanc.dicom_port
    assert _send(exported, port) == 0
    receipt = _receipt(exported)
    uids = {r["sop_instance_uid"] for r in receipt["instances"]}
    # The study is deleted in the PACS; the receipt still says stored.
    [study] = orthanc.get("/studies")
    _rest(orthanc, "DELETE", f"/studies/{study}")
    assert orthanc.get("/instances") == []
    capsys.readouterr()
    assert _send(exported, port) == 0
    assert "holds all 8 instances (8 sent now, 0 already there)" in capsys.readouterr().out
    assert _orthanc_sop_uids(orthanc) == uids
    last = _receipt(exported)["deliveries"][-1]
    assert last["query"]["method"] == "C-FIND IMAGE, Study Root"
    assert (last["query"]["recorded_stored"], last["query"]["held"]) == (2 * N, 0)
    assert (last["query"]["gone"], last["attempted"], last["stored"]) == (2 * N, 2 * N, 2 * N)
    # One instance lost: exactly that one is sent again.
    lost = next(r for r in receipt["instances"] if r["kind"] == "segmentation")
    [orthanc_id] = _rest(orthanc, "POST", "/tools/lookup", lost["sop_instance_uid"].encode())
    _rest(orthanc, "DELETE", f"/instances/{orthanc_id['ID']}")
    assert _send(exported, port) == 0
    last = _receipt(exported)["deliveries"][-1]
    assert (last["query"]["held"], last["query"]["gone"], last["attempted"]) == (2 * N - 1, 1, 1)
    assert _orthanc_sop_uids(orthanc) == uids
    # Nothing lost: nothing sent, and the message says the PACS confirmed it.
    capsys.readouterr()
    assert _send(exported, port) == 0
    assert "0 sent now, 8 already there as C-FIND confirmed" in capsys.readouterr().out
    # --force sends everything without asking.
    assert (
        main(
            [
                "export",
                "--out",
                str(exported),
                "--pacs",
                f"127.0.0.1:{port}",
                "--force",
                "--aet",
                SENDER_AET,
                "--called-aet",
                ORTHANC_AET,
            ]
        )
        == 0
    )
    last = _receipt(exported)["deliveries"][-1]
    assert last["force"] and last["query"] is None and last["attempted"] == 2 * N


def _filler(nbytes: int) -> tuple[bytes, str]:
    """(A DICOM file of about ``nbytes`` of another made-up patient, its SOP Instance UID)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "FILLER", "FILLER^STORAGE", "OT"
    ds.Rows, ds.Columns = nbytes // 2048, 1024
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros(ds.Rows * ds.Columns, np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds.SOPInstanceUID


def _rest(server: Orthanc, method: str, path: str, data: bytes | None = None):
    req = urllib.request.Request(server.url + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as rsp:
        body = rsp.read()
    return json.loads(body) if body else None


def test_refused_instances_then_retry_sends_only_those(exported, orthanc, monkeypatch, capsys):
    # A 1 MB storage area, filled by a protected patient so that the images fit and no SEG
    # does: Orthanc answers the SEGs' C-STOREs with 0xA700 (Refused: Out of Resources).
    orthanc.start(max_storage_mb=1)
    rows = _receipt(exported)["instances"]
    sizes = {r["kind"]: [] for r in rows}
    for r in rows:
        sizes[r["kind"]].append((exported / r["file"]).stat().st_size)
    room = sum(sizes["image"]) + min(sizes["segmentation"]) // 2
    data, filler_uid = _filler(1024 * 1024 - room)
    filler = _rest(orthanc, "POST", "/instances", data)
    _rest(orthanc, "PUT", f"/patients/{filler['ParentPatient']}/protected", b"1")
    port = orthanc.dicom_port

    assert _send(exported, port) == 2
    err = capsys.readouterr().err
    assert f"{N} rejected" in err and "Out of Resources" in err
    assert f"{N} of {2 * N} instances are stored" in err
    receipt = _receipt(exported)
    key = f"{ORTHANC_AET}@127.0.0.1:{port}"
    stored = {
        r["sop_instance_uid"] for r in receipt["instances"] if r["pacs"][key]["status"] == "stored"
    }
    rejected = [r for r in receipt["instances"] if r["pacs"][key]["status"] == "rejected"]
    # The receipt says exactly what arrived: what Orthanc holds, no more, no less.
    assert _orthanc_sop_uids(orthanc) - {filler_uid} == stored
    assert len(stored) == N and {r["kind"] for r in rejected} == {"segmentation"}
    assert {r["pacs"][key]["status_code"] for r in rejected} == {"0xA700"}

    # Room again; the retry sends the refused SEGs and nothing else.
    _rest(orthanc, "DELETE", f"/patients/{filler['ParentPatient']}")
    sent = []
    real = pacs.store_files

    def spy(files, dest, timeouts):
        sent.extend(p.name for p, _ in files)
        return real(files, dest, timeouts)

    monkeypatch.setattr(pacs, "store_files", spy)
    assert _send(exported, port) == 0
    assert sorted(sent) == sorted(r["file"].split("/")[-1] for r in rejected)
    assert set(_statuses(exported, port)) == {"stored"}
    assert _orthanc_sop_uids(orthanc) == {r["sop_instance_uid"] for r in receipt["instances"]}
    last = _receipt(exported)["deliveries"][-1]
    assert (last["attempted"], last["stored"], last["missing_after"]) == (N, N, 0)


@pytest.fixture
def aborting_peer():
    """A pynetdicom storage SCP that stores two instances, then aborts on the third request;
    it answers C-FIND at IMAGE level from what it stored (``mode["find"]`` False: it fails)."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    received: list[str] = []
    series: dict[str, str] = {}  # SOP Instance UID -> Series Instance UID
    mode = {"abort_at": 3, "find": True}

    def on_store(event):
        if len(received) + 1 == mode["abort_at"]:
            event.assoc.abort()
            return 0xA700
        received.append(event.request.AffectedSOPInstanceUID)
        series[received[-1]] = event.dataset.SeriesInstanceUID
        return 0x0000

    def on_find(event):
        if not mode["find"]:
            yield 0xC000, None  # Unable to process
            return
        query = event.identifier
        for uid in dict.fromkeys(received):
            if series[uid] == query.SeriesInstanceUID:
                found = Dataset()
                found.QueryRetrieveLevel = "IMAGE"
                found.StudyInstanceUID = query.StudyInstanceUID
                found.SeriesInstanceUID, found.SOPInstanceUID = series[uid], uid
                yield 0xFF00, found

    ae = AE(ae_title="PEER")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        yield port, received, mode
    finally:
        server.shutdown()


def test_association_aborted_mid_transfer(exported, aborting_peer, tmp_path, capsys):
    port, received, mode = aborting_peer
    # Short DIMSE timeout: a request that went out just before the abort arrived waits for it.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["export"]["dimse_timeout_s"] = 5
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    send = ["export", "--params", str(params), "--out", str(exported)]
    send += ["--pacs", f"127.0.0.1:{port}", "--called-aet", "PEER"]
    assert main(send) == 2
    err = capsys.readouterr().err
    statuses = _statuses(exported, port, called="PEER")
    assert statuses[:3] == ["stored", "stored", "unconfirmed"]
    # Requests sent before the abort reached us are unconfirmed too; the rest never went out.
    assert set(statuses[3:]) <= {"unconfirmed", "not sent"} and "not sent" in statuses
    counts = {s: statuses.count(s) for s in ("unconfirmed", "not sent")}
    assert f"{counts['unconfirmed']} unconfirmed, {counts['not sent']} not sent" in err
    rows = _receipt(exported)["instances"]
    # Nothing unsent is reported as sent: "stored" is exactly what the peer received.
    stored = [r["sop_instance_uid"] for r, s in zip(rows, statuses, strict=True) if s == "stored"]
    assert stored == received

    mode["abort_at"] = 0  # the peer behaves now; the retry sends the rest, starting at the third
    assert main(send) == 0
    assert received == [r["sop_instance_uid"] for r in rows]
    last = _receipt(exported)["deliveries"][-1]
    assert last["attempted"] == 2 * N - 2 and (last["query"]["held"], last["query"]["gone"]) == (
        2,
        0,
    )

    # A PACS that cannot say what it holds is not believed: everything goes again.
    mode["find"] = False
    assert main(send) == 0
    assert received[2 * N :] == [r["sop_instance_uid"] for r in rows]
    last = _receipt(exported)["deliveries"][-1]
    assert last["attempted"] == 2 * N and last["query"]["held"] is None
    assert "C-FIND gave status 0xC000" in last["query"]["error"]
