"""Fixtures of the export tests: synthetic sets in the `gvae generate` format, DICOM tool runs,
and a real Orthanc PACS on loopback.

Orthanc runs with its own configuration and storage folder under the test's tmp folder, on free
loopback ports. Orthanc 1.10 has no bind-address option, so the configuration shuts out
everything but loopback the ways it can: the REST API refuses remote hosts
(``RemoteAccessAllowed: false``), and DICOM accepts only the one known modality, checked by AE
title and by host 127.0.0.1 (``DicomAlwaysAllow*: false``, ``DicomCheckModalityHost: true``).
It is always stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from common.atomic import write_json
from pipeline.io.shards import FORMAT, INDEX_NAME, ShardWriter

from .ct_fixtures import AXES

ORTHANC_AET = "ORTHANC_TEST"
SENDER_AET = "GVAE_TEST"
WINDOW = {"level": 40.0, "width": 400.0}


def write_synthetic_set(
    dest: Path,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    model: str = "vae",
    run: Path | None = None,
    trained_on: list[str] | None = None,
    pixel_mm: float = 6.25,
) -> Path:
    """A folder as `gvae generate` writes it (split ``synthetic``, index ``source`` block)."""
    writer = ShardWriter(dest / "synthetic", shard_size=4096, prefix="synthetic/")
    case = f"syn-{model}"
    writer.add(images.astype(np.float32), masks.astype(np.uint8), case, np.arange(len(images)))
    size = int(images.shape[-1])
    index = {
        "format": FORMAT,
        "size": size,
        "pixel_mm": pixel_mm,
        "fov_mm": pixel_mm * size,
        "window": WINDOW,
        "axes": AXES,
        "splits": {
            "synthetic": {
                "cases": [case],
                "shards": writer.close(),
                "slices": len(images),
                "positive": int(masks.reshape(len(masks), -1).any(1).sum()),
                "negative": int((~masks.reshape(len(masks), -1).any(1)).sum()),
            }
        },
        "cases": {case: {"split": "synthetic", "n_slices": len(images)}},
        "skipped": [],
        "source": {
            "model": model,
            "run": None if run is None else str(run),
            "seed": 0,
            "n_requested": len(images),
            "trained_on": trained_on,
            "fraction": None,
        },
    }
    write_json(dest / INDEX_NAME, index)
    return dest


def require_tool(name: str) -> str:
    """Path of the command-line tool ``name``; skip without it, except in CI, where it fails.

    ``.ci/run`` installs dicom3tools, dcmtk and orthanc, so in CI a missing tool is a broken
    setup, never a reason to pass without the check.
    """
    # Debian installs Orthanc to /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if found is None:
        msg = f"{name} not installed (apt-get install dicom3tools dcmtk orthanc)"
        if os.environ.get("GVAE_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def dcmqi_tool(name: str) -> str:
    """Path of dcmqi's command-line tool ``name`` (the ``dcmqi`` wheel's console script).

    dcmqi is a dev dependency (pyproject.toml), so a missing tool is a broken install: the test
    fails, in CI and out, and says how to install it.
    """
    beside = Path(sys.executable).parent / name  # the venv's bin/, whatever PATH says
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(
            f"dcmqi's {name} is neither beside {sys.executable} nor on PATH: install the dev "
            'dependencies (pip install -e ".[dev]", which holds dcmqi>=1.5.7)'
        )
    return found


def dcmqi_read_seg(seg: Path, out_dir: Path) -> list[Path]:
    """The NRRD files dcmqi's ``segimage2itkimage`` writes for the DICOM SEG ``seg`` (one per
    group of non-overlapping segments) into ``out_dir``; fails with dcmqi's output if it fails.
    """
    out_dir.mkdir(parents=True)
    cmd = [dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(seg)]
    cmd += ["--outputDirectory", str(out_dir), "--outputType", "nrrd", "--prefix", "seg"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.fail(f"segimage2itkimage failed on {seg.name}:\n{res.stdout}{res.stderr}")
    return sorted(out_dir.glob("seg-*.nrrd"))


def dciodvfy(path: Path) -> tuple[str, set[str]]:
    """(IOD name dciodvfy validated against, the set of its other output lines)."""
    res = subprocess.run(
        [require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60
    )
    lines = [ln.rstrip() for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    iods = [ln for ln in lines if ln.isalnum()]  # the IOD's name stands alone on its line
    assert len(iods) == 1, lines
    return iods[0], {ln for ln in lines if ln != iods[0]}


# Where Debian's orthanc-dicomweb puts its plugin (a link to /usr/lib/orthanc/...).
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",)


def dicomweb_config() -> dict:
    """Orthanc configuration options that load the DICOMweb plugin at ``/dicom-web/``.

    Fails without the plugin, in CI and out: ``.ci/system-deps`` installs it
    (``orthanc-dicomweb``), and the viewer test has nothing to show without it.
    """
    found = [p for p in DICOMWEB_PLUGINS if Path(p).is_file()]
    if not found:
        pytest.fail(
            f"Orthanc's DICOMweb plugin not found at {DICOMWEB_PLUGINS} "
            "(apt-get install orthanc-dicomweb; .ci/system-deps)"
        )
    # "Full" metadata: read from the stored files, so every attribute a viewer needs is there.
    dicomweb = {
        "Enable": True,
        "Root": "/dicom-web/",
        "StudiesMetadata": "Full",
        "SeriesMetadata": "Full",
    }
    return {"Plugins": found[:1], "DicomWeb": dicomweb}


def stop_by_pid(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """Stop a child we started, by its PID: TERM, then KILL after ``timeout`` s; wait for it."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its ports, folder and process."""

    dicom_port: int
    http_port: int
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):
        """GET ``path`` of the REST API as parsed JSON."""
        with urllib.request.urlopen(self.url + path, timeout=10) as rsp:
            return json.loads(rsp.read())

    def start(
        self, max_storage_mb: int = 0, timeout: float = 60, extra: dict | None = None
    ) -> Orthanc:
        """Write the configuration and start; wait until the REST API answers.

        ``max_storage_mb`` > 0 caps the storage area: an instance that does not fit (and no
        unprotected patient can be recycled) is refused with status 0xA700. ``extra``
        overrides configuration options.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "gvae-export-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"sender": [SENDER_AET, "127.0.0.1", 1]},
            "LuaScripts": [],
            "Plugins": [],
            "MaximumStorageSize": max_storage_mb,
            **(extra or {}),
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - the child keeps it open
        self.process = subprocess.Popen(
            [require_tool("Orthanc"), str(self.folder / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                # REST comes up before the DICOM server: on a loaded machine an association
                # sent right after would race it, so wait for a real C-ECHO as well.
                if self._echo():
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer C-ECHO and REST within the timeout")

    def _echo(self) -> bool:
        """True when the DICOM port answers a C-ECHO from the known sender with Success."""
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=SENDER_AET)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title=ORTHANC_AET)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and status.Status == 0x0000
        finally:
            assoc.release()

    def stop(self) -> None:
        """Stop the process by its PID (TERM, then KILL) and wait for it."""
        proc, self.process = self.process, None
        stop_by_pid(proc)
