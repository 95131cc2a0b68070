"""``gvae fetch-tcia`` against a local stub of TCIA's NBIA REST API serving the real patient.

The stub answers ``getSeries`` and ``getImageWithMD5Hash`` in the API's shape (JSON rows; a
zip of DICOM files + ``md5hashes.csv``) and serves the labels archive, with archives built here
from PANCREAS_0001 of the data mirror. It can fail a request with HTTP 500, break a body off
half-way, and honour or ignore Range, and it logs every request it sees.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom
import pytest

from pipeline.cli import main as cli_main
from pipeline.cohort import ingest
from pipeline.cohort.fetch import download as fetch_tcia
from pipeline.cohort.fetch.tcia_api import FetchError, parse_series
from pipeline.cohort.fetch.tcia_archive import extract_series
from pipeline.params.fetch import FetchParams
from pipeline.params.loader import IngestParams

pytestmark = pytest.mark.real_data

API = "/nbia-api/services/v1/"
LABELS = "TCIA_pancreas_labels-02-05-2017"
P1, P2 = "PANCREAS_0001", "PANCREAS_0002"
# A second "patient" made of real slices under UIDs of its own: fetch never parses DICOM.
P2_STUDY, P2_SERIES = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_archive(files: list[Path], corrupt: str | None = None) -> bytes:
    """A getImageWithMD5Hash zip of ``files``; the md5 listed for ``corrupt`` is wrong."""
    buf, rows = io.BytesIO(), ["Filename,MD5Hash"]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in files:
            data = path.read_bytes()
            zf.writestr(path.name, data)
            rows.append(f"{path.name},{md5(data + b'x') if path.name == corrupt else md5(data)}")
        zf.writestr("md5hashes.csv", "\r\n".join(rows) + "\r\n")
    return buf.getvalue()


@pytest.fixture(scope="module")
def real(real_data_dir):
    """The real patient: its slices, UIDs, label file and full archives (built once)."""
    root = real_data_dir / "pancreas_ct"
    slices = sorted((root / "Pancreas-CT" / P1).rglob("*.dcm"))
    head = pydicom.dcmread(slices[0], stop_before_pixels=True)
    label = root / LABELS / "label0001.nii.gz"
    labels_zip = io.BytesIO()
    with zipfile.ZipFile(labels_zip, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{LABELS}/", b"")
        zf.writestr(f"{LABELS}/label0001.nii.gz", label.read_bytes())
        zf.writestr(f"__MACOSX/{LABELS}/._label0001.nii.gz", b"junk")
    return {
        "slices": slices,
        "study": str(head.StudyInstanceUID),
        "series": str(head.SeriesInstanceUID),
        "label": label,
        "labels_zip": labels_zip.getvalue(),
        "small": make_archive(slices[100:130]),  # 30 slices, about 15 MB
        "p2": make_archive(slices[:6]),
    }


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        stub = self.server.stub
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        key = query.get("SeriesInstanceUID", url.path.rsplit("/", 1)[-1])
        entry = {"key": key, "range": self.headers.get("Range")}
        stub.log.append(entry)
        fault = stub.faults[key].pop(0) if stub.faults.get(key) else None
        if fault == 500:
            entry["status"] = 500
            self.send_error(500, "stub failure")
            return
        if url.path == API + "getSeries" and query.get("format") == "json":
            body, ranged = json.dumps(stub.rows).encode(), False
        elif url.path == API + "getImageWithMD5Hash" and key in stub.archives:
            body, ranged = stub.archives[key], True
        elif url.path == "/labels.zip":
            body, ranged = stub.labels, True
        else:
            entry["status"] = 404
            self.send_error(404)
            return
        start = 0
        if ranged and entry["range"] and stub.honour_range:
            start = int(entry["range"].removeprefix("bytes=").rstrip("-"))
        entry["status"] = 206 if start else 200
        self.send_response(entry["status"])
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        # "break": headers promise the whole body, half arrives, then the connection closes.
        self.wfile.write(payload[: len(payload) // 2] if fault == "break" else payload)


class Stub:
    def __init__(self, real):
        self.log: list[dict] = []
        self.faults: dict[str, list] = {}
        self.honour_range = True
        self.labels = real["labels_zip"]
        self.rows = [series_row(P1, real["study"], real["series"], 30)]
        self.archives = {real["series"]: real["small"]}

    def add_p2(self, real, archive: bytes | None = None) -> None:
        self.rows.append(series_row(P2, P2_STUDY, P2_SERIES, 6))
        self.archives[P2_SERIES] = archive or real["p2"]

    def count(self, key: str) -> int:
        return sum(1 for e in self.log if e["key"] == key)


def series_row(patient: str, study: str, series: str, images: int) -> dict:
    return {
        "SeriesInstanceUID": series,
        "StudyInstanceUID": study,
        "Modality": "CT",
        "Collection": "Pancreas-CT",
        "PatientID": patient,
        "ImageCount": images,
        "SeriesNumber": 1,
        "BodyPartExamined": "PANCREAS",
    }


@pytest.fixture
def stub(real, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.stub = Stub(real)
    server.stub.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.stub
    server.shutdown()
    server.server_close()


def params(stub, **over) -> FetchParams:
    fields = {
        "base_url": stub.url + API,
        "labels_url": stub.url + "/labels.zip",
        "labels_checksum": f"md5:{md5(stub.labels)}",
        "retries": 2,
        "backoff_s": 0.0,
        "timeout_s": 30.0,
    }
    return FetchParams(**{**fields, **over})


def fetch(stub, out, **over):
    return fetch_tcia.run(params(stub, **over), out, progress=False)


def series_dir(out: Path, patient: str, study: str, series: str) -> Path:
    return out / "Pancreas-CT" / patient / study / series


def p1_dir(out: Path, real) -> Path:
    return series_dir(out, P1, real["study"], real["series"])


def assert_same_files(folder: Path, sources: list[Path]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in sources)
    for src in sources:
        assert md5((folder / src.name).read_bytes()) == md5(src.read_bytes()), src.name


# ----------------------------------------------------------------------------- full fetch
def test_full_fetch_is_what_ingest_reads(real, stub, tmp_path, capsys):
    """The whole real series through the CLI, then `gvae ingest` on the fetched folders."""
    stub.archives[real["series"]] = make_archive(real["slices"])
    stub.rows = [series_row(P1, real["study"], real["series"], len(real["slices"]))]
    stub.add_p2(real)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"fetch: {{labels_checksum: 'md5:{md5(stub.labels)}'}}\n")
    out = tmp_path / "tcia"
    argv = ["fetch-tcia", "--params", str(params_file), "--out", str(out), "--no-progress"]
    argv += ["--base-url", stub.url + API, "--labels-url", stub.url + "/labels.zip"]
    assert cli_main([*argv, "--patients", P1]) == 0
    assert "1 series downloaded" in capsys.readouterr().err
    assert stub.count(P2_SERIES) == 0  # --patients: P2 is listed but not fetched
    assert_same_files(series_dir(out, P1, real["study"], real["series"]), real["slices"])
    assert sorted(p.name for p in (out / "Pancreas-CT").iterdir()) == [P1]
    assert [p.name for p in (out / LABELS).iterdir()] == ["label0001.nii.gz"]
    assert md5((out / LABELS / "label0001.nii.gz").read_bytes()) == md5(real["label"].read_bytes())

    (row,) = ingest.run(IngestParams(workers=1), out / "Pancreas-CT", out / LABELS, tmp_path / "v")
    assert row["case_id"] == P1 and row["status"] == "ok", row
    assert row["shape"] == [512, 512, 240] and row["label_voxels"] == 78329
    assert 98.0 <= row["label_hu_mean"] <= 108.0 and row["label_hu_sd"] < 40.0, row
    assert row["warning"] is None


# ----------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "range-ignored"])
def test_broken_download_resumes_next_run(real, stub, tmp_path, honour_range):
    stub.honour_range = honour_range
    stub.faults[real["series"]] = ["break"]
    out = tmp_path / "out"
    first = fetch(stub, out, retries=0)
    assert len(first["failed"]) == 1 and real["series"] in first["failed"][0]
    assert "next run resumes" in first["failed"][0]
    part = out / fetch_tcia.WORK_DIR / "Pancreas-CT" / f"{real['series']}.zip.part"
    kept = part.stat().st_size
    assert 0 < kept < len(real["small"])
    folder = series_dir(out, P1, real["study"], real["series"])
    assert not folder.exists()  # a half-downloaded series never looks complete

    second = fetch(stub, out)
    assert second["downloaded"] == [real["series"]] and not second["failed"]
    last = [e for e in stub.log if e["key"] == real["series"]][-1]
    assert last["range"] == f"bytes={kept}-"
    assert last["status"] == (206 if honour_range else 200)
    assert_same_files(folder, real["slices"][100:130])
    assert not part.exists()


def test_broken_download_resumes_within_the_run(real, stub, tmp_path):
    stub.faults[real["series"]] = ["break"]
    report = fetch(stub, tmp_path, retries=1)
    assert report["downloaded"] == [real["series"]] and not report["failed"]
    first, second = [e for e in stub.log if e["key"] == real["series"]]
    assert first["range"] is None and second["range"].startswith("bytes=")
    assert second["status"] == 206
    assert_same_files(p1_dir(tmp_path, real), real["slices"][100:130])


# ----------------------------------------------------------------------------- checksums
def test_md5_mismatch_names_series_and_file(real, stub, tmp_path, capsys):
    bad = real["slices"][2].name
    stub.add_p2(real, make_archive(real["slices"][:6], corrupt=bad))
    params_file = tmp_path / "params.yaml"
    params_file.write_text("fetch: {retries: 0, backoff_s: 0, labels_checksum: null}\n")
    out = tmp_path / "out"
    argv = ["fetch-tcia", "--params", str(params_file), "--out", str(out), "--no-progress"]
    argv += ["--base-url", stub.url + API, "--labels-url", stub.url + "/labels.zip"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{P2} series {P2_SERIES}: {bad}: md5" in err and "1 failed" in err

    state = json.loads((out / fetch_tcia.WORK_DIR / "Pancreas-CT" / "state.json").read_text())
    assert sorted(state["series"]) == [real["series"]]  # P1 complete, P2 not marked
    assert (out / LABELS / "label0001.nii.gz").is_file()
    assert_same_files(series_dir(out, P1, real["study"], real["series"]), real["slices"][100:130])
    assert not (out / "Pancreas-CT" / P2).exists()  # no temp, no empty case folder left
    assert not (out / fetch_tcia.WORK_DIR / "Pancreas-CT" / f"{P2_SERIES}.zip").exists()

    assert cli_main(argv) == 1  # the next run skips P1 and tries P2 again
    assert stub.count(real["series"]) == 1 and stub.count(P2_SERIES) == 2


def test_labels_checksum_mismatch_is_an_error(stub, tmp_path):
    report = fetch(stub, tmp_path, labels_checksum="sha256:" + "0" * 64)
    assert report["labels"] == "failed" and report["downloaded"]
    (message,) = report["failed"]
    assert "labels.zip" in message and "sha256" in message and "does not match" in message
    assert not (tmp_path / LABELS).exists()


def test_unlisted_or_unsafe_members_are_refused(real, tmp_path):
    slices = real["slices"][:2]
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_archive(slices))
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("extra.dcm", b"not listed")
    with pytest.raises(FetchError, match=r"series X: DICOM files without an md5 .*extra\.dcm"):
        extract_series(archive, tmp_path / "s", None, "series X")
    data = slices[0].read_bytes()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.dcm", data)
        zf.writestr("md5hashes.csv", f"Filename,MD5Hash\n../evil.dcm,{md5(data)}\n")
    unsafe = r"series X: archive member '\.\./evil\.dcm' has an unsafe file name"
    with pytest.raises(FetchError, match=unsafe):
        extract_series(archive, tmp_path / "s", None, "series X")
    archive.write_bytes(make_archive(slices))
    with pytest.raises(FetchError, match="archive has 2 files, getSeries says ImageCount 3"):
        extract_series(archive, tmp_path / "s", 3, "series X")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- reruns
def test_second_run_downloads_nothing(real, stub, tmp_path):
    stub.add_p2(real)
    first = fetch(stub, tmp_path)
    assert sorted(first["downloaded"]) == sorted([real["series"], P2_SERIES])
    assert first["labels"] == "downloaded" and not first["failed"]
    requests_before = len(stub.log)

    second = fetch(stub, tmp_path)
    assert second["downloaded"] == [] and sorted(second["skipped"]) == sorted(first["downloaded"])
    assert second["labels"] == "skipped"
    assert [e["key"] for e in stub.log[requests_before:]] == ["getSeries"]

    # A file deleted from a complete series makes just that series come again.
    p2 = series_dir(tmp_path, P2, P2_STUDY, P2_SERIES)
    (p2 / real["slices"][0].name).unlink()
    third = fetch(stub, tmp_path)
    assert third["downloaded"] == [P2_SERIES] and third["skipped"] == [real["series"]]
    assert_same_files(p2, real["slices"][:6])


# ----------------------------------------------------------------------------- retries
def test_http_500_is_retried(real, stub, tmp_path):
    stub.faults = {"getSeries": [500], real["series"]: [500, 500], "labels.zip": [500]}
    report = fetch(stub, tmp_path, retries=2)
    assert report["downloaded"] == [real["series"]] and report["labels"] == "downloaded"
    assert stub.count("getSeries") == 2 and stub.count(real["series"]) == 3
    assert stub.count("labels.zip") == 2
    assert_same_files(p1_dir(tmp_path, real), real["slices"][100:130])


def test_retries_exhausted_names_the_series(real, stub, tmp_path):
    stub.add_p2(real)
    stub.faults = {real["series"]: [500, 500]}
    report = fetch(stub, tmp_path, retries=1)
    assert report["downloaded"] == [P2_SERIES]
    (message,) = report["failed"]
    assert message.startswith(f"{P1} series {real['series']}: ") and "500" in message
    assert stub.count(real["series"]) == 2


# ----------------------------------------------------------------------------- input checks
def test_unknown_patient_and_bad_params(stub, tmp_path):
    from pipeline.errors import StageError

    with pytest.raises(StageError, match="no series of patient\\(s\\) PANCREAS_0099"):
        fetch_tcia.run(params(stub), tmp_path, patients=["PANCREAS_0099"], progress=False)
    assert [e["key"] for e in stub.log] == ["getSeries"]
    with pytest.raises(ValueError, match="labels_checksum 'md5:123'"):
        FetchParams(labels_checksum="md5:123")
    with pytest.raises(ValueError, match="collection '../x'"):
        FetchParams(collection="../x")
    with pytest.raises(ValueError, match=r"row 0: SeriesInstanceUID '\.\./x'"):
        parse_series([series_row(P1, "1.2", "../x", 1)], "getSeries")
