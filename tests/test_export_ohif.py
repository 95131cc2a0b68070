"""An exported study in a real viewer in a real browser: OHIF (``gvae view``) in headless
Chromium, reading the study from a real Orthanc through its DICOMweb plugin.

The study opens; every synthetic slice is reached with the keyboard, as a user scrolls; each
slice's SEG, opened from the study browser (a double click on its series), is drawn on it. The
check is on the rendered pixels: each image pixel of the slice is projected to the screen with
the viewport's own geometry, and the screenshot must be tinted at the centres of the mask's
pixels, in the SEG's recommended colour (orange), and grey elsewhere. The same screenshot
checked against the mask flipped or transposed fails, and before its SEG is opened the slice
has no tinted pixel at all.

The masks are chosen so that a flip, a transpose or a shift would show (an L, a triangle, an
off-centre rectangle). ``GVAE_OHIF_SCREENSHOT=FILE`` keeps the screenshot of the first slice
with its overlay (docs/export_ohif.png is one).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.export.viewer import Viewer, install

from .cdp import Browser
from .conftest import REPO
from .ct_fixtures import toy_pairs
from .export_fixtures import (
    ORTHANC_AET,
    SENDER_AET,
    Orthanc,
    dicomweb_config,
    free_port,
    write_synthetic_set,
)

S = 64
PIXEL_MM = 3.125
# A screen pixel is tinted when its red exceeds its blue by more than this: the image is grey
# (R = G = B), the viewer's text over it white or light blue, the overlay orange (or red).
TINT = 25
# The viewport: the one enabled element of OHIF's basic viewer (cornerstone3D).
VIEWPORT = "cornerstone.getEnabledElements()[0]?.viewport"


def _masks() -> np.ndarray:
    """(3, 1, S, S) uint8: an L top left, a triangle bottom right, a rectangle top right."""
    masks = np.zeros((3, 1, S, S), np.uint8)
    masks[0, 0, 8:30, 8:16] = 1
    masks[0, 0, 22:30, 8:28] = 1
    r, c = np.mgrid[:S, :S]
    masks[1, 0] = (r >= 36) & (r < 58) & (c >= 34) & (c - 34 <= r - 36)
    masks[2, 0, 10:24, 40:56] = 1
    return masks


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The masks exported and sent with ``gvae export --pacs`` to an Orthanc with DICOMweb,
    OHIF served in front of it: yields the viewer, the slices (image UID, SEG series number,
    mask) in instance order, and the study UID."""
    root = tmp_path_factory.mktemp("ohif")
    masks = _masks()
    syn = write_synthetic_set(
        root / "syn", toy_pairs(len(masks), S, seed=7)[0], masks, pixel_mm=PIXEL_MM
    )
    out = root / "out"
    # No training slices: both gates' data checks cannot run and are overridden.
    args = ["--synthetic", str(syn), "--out", str(out), "--n", str(len(masks))]
    assert main(["export", *args, "--allow-near-copies", "--allow-implausible"]) == 0
    orthanc = Orthanc(free_port(), free_port(), root / "orthanc")
    orthanc.start(extra=dicomweb_config())
    try:
        send = ["export", "--out", str(out), "--pacs", f"127.0.0.1:{orthanc.dicom_port}"]
        assert main([*send, "--aet", SENDER_AET, "--called-aet", ORTHANC_AET]) == 0
        receipt = json.loads((out / "receipt.json").read_text())
        rows = receipt["instances"]
        images = {r["sop_instance_uid"]: r for r in rows if r["kind"] == "image"}
        slices = []
        for seg in (r for r in rows if r["kind"] == "segmentation"):
            image = images[seg["references"]]
            number = int(pydicom.dcmread(out / seg["file"], stop_before_pixels=True).SeriesNumber)
            slices.append(
                (image["instance_number"], seg["references"], number, masks[seg["draw"], 0])
            )
        slices.sort(key=lambda s: s[0])
        with Viewer(
            install(REPO / "docs" / "ohif"), orthanc.url + "/dicom-web", notices=False
        ) as viewer:
            yield {
                "viewer": viewer,
                "study": receipt["study"]["study_instance_uid"],
                "slices": slices,
            }
    finally:
        orthanc.stop()


def _screen(browser: Browser) -> np.ndarray:
    """The page as an (H, W, 3) int array."""
    with Image.open(io.BytesIO(browser.screenshot())) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


def _pixel_centres(browser: Browser) -> np.ndarray:
    """(S, S, 2) page coordinates (x, y) of the centre of each pixel (row, column) of the image
    the viewport shows, from its own image-to-world and world-to-canvas transforms."""
    xy = browser.evaluate(
        f"""(() => {{
        const vp = {VIEWPORT}, d = vp.getImageData(), box = vp.canvas.getBoundingClientRect();
        const [cols, rows] = d.dimensions, out = [];
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {{
            const [x, y] = vp.worldToCanvas(d.imageData.indexToWorld([c, r, 0]));
            out.push([box.x + x, box.y + y]);
        }}
        return out; }})()"""
    )
    return np.asarray(xy, float).reshape(S, S, 2)


def tinted(screen: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(S, S) bool: whether the screen pixel at each image pixel's centre is tinted."""
    rgb = _at(screen, centres)
    return rgb[..., 0] - rgb[..., 2] > TINT


def _at(screen: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(S, S, 3) colours of the screen pixels at the image pixels' centres."""
    x = np.clip(np.rint(centres[..., 0]).astype(int), 0, screen.shape[1] - 1)
    y = np.clip(np.rint(centres[..., 1]).astype(int), 0, screen.shape[0] - 1)
    return screen[y, x]


def agreement(tint: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(share of the mask's inner pixels tinted, share of the pixels away from it tinted).

    Pixels next to the mask's edge are left out of both: the viewer draws the outline there.
    """
    m = mask.astype(bool)
    pad = np.pad(m, 1)
    near = np.zeros_like(m)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            near |= pad[1 + dr : 1 + dr + S, 1 + dc : 1 + dc + S]
    inner = m.copy()
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            inner &= pad[1 + dr : 1 + dr + S, 1 + dc : 1 + dc + S]
    return float(tint[inner].mean()), float(tint[~near].mean())


def _go_to(browser: Browser, sop_uid: str) -> None:
    """Scroll the viewport with the arrow keys to the image ``sop_uid``, wherever it is in the
    stack; wait until it is drawn."""
    ids = browser.evaluate(f"{VIEWPORT}.getImageIds()")
    [index] = [k for k, image_id in enumerate(ids) if f"/instances/{sop_uid}/" in image_id]
    for _ in range(len(ids)):
        current = browser.evaluate(f"{VIEWPORT}.getCurrentImageIdIndex()")
        if current == index:
            break
        down = current < index
        browser.key(*(("ArrowDown", "ArrowDown", 40) if down else ("ArrowUp", "ArrowUp", 38)))
        browser.wait_for(f"{VIEWPORT}.getCurrentImageIdIndex() !== {current}", 30, "the next image")
    image_id = browser.evaluate(f"{VIEWPORT}.getCurrentImageId()")
    assert f"/instances/{sop_uid}/" in image_id, (sop_uid, image_id)
    # The image is drawn once its pixel data arrived; the viewport says so.
    browser.wait_for(f"{VIEWPORT}.getImageData()?.dimensions?.[0] === {S}", 60, "the image")


def _double_click(browser: Browser, selector: str) -> None:
    box = browser.evaluate(
        f"(() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();"
        " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    browser.click(*box, count=2)


def _overlay(browser: Browser, mask: np.ndarray, timeout: float = 60) -> np.ndarray:
    """The screenshot once the overlay is drawn where ``mask`` says (or the last one, failed)."""
    deadline = time.monotonic() + timeout
    while True:
        screen = _screen(browser)
        inside, outside = agreement(tinted(screen, _pixel_centres(browser)), mask)
        if (inside >= 0.98 and outside <= 0.002) or time.monotonic() > deadline:
            assert inside >= 0.98 and outside <= 0.002, (
                f"overlay not where the mask is: {inside:.1%} of the mask's pixels tinted, "
                f"{outside:.1%} of those away from it",
                browser.console[-20:],
            )
            return screen
        time.sleep(0.5)


@pytest.mark.slow
def test_ohif_shows_every_slice_with_its_seg_overlay(study, tmp_path):
    viewer, slices = study["viewer"], study["slices"]
    # Generous limits: they only bound a failure, and CI runs other tests beside this one.
    with Browser(tmp_path / "chromium", timeout=120) as browser:
        browser.goto(viewer.study_url(study["study"]))
        # The study opens: its image series in the viewport, one SEG series per slice listed.
        browser.wait_for(f"!!{VIEWPORT}?.getCurrentImageId()", 240, "the first image")
        for _, _, number, _ in slices:
            browser.wait_for(f"!!document.querySelector('[data-series=\"{number}\"]')", 60)
        assert browser.evaluate(f"{VIEWPORT}.getImageIds().length") == len(slices)
        # Keyboard focus on the viewport (a click that drags nothing).
        box = browser.evaluate(
            f"(() => {{ const r = {VIEWPORT}.canvas.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        browser.click(*box)
        for index, (_, sop_uid, number, mask) in enumerate(slices):
            _go_to(browser, sop_uid)
            before = tinted(_screen(browser), _pixel_centres(browser))
            assert not before.any(), f"slice {index + 1} is tinted before its SEG is opened"
            loaded = browser.evaluate(
                "cornerstoneTools.segmentation.state.getSegmentations().length"
            )
            _double_click(browser, f'[data-series="{number}"]')
            browser.wait_for(
                "cornerstoneTools.segmentation.state.getSegmentations().length > " + str(loaded),
                120,
                f"the SEG of slice {index + 1} (series {number})",
            )
            _go_to(browser, sop_uid)  # opening a SEG may move the viewport
            screen = _overlay(browser, mask)
            centres = _pixel_centres(browser)
            tint = tinted(screen, centres)
            # In the SEG's own colour (orange: R > G > B), not OHIF's default red (G = B).
            r, g, b = _at(screen, centres)[tint & mask.astype(bool)].mean(0)
            assert r > g + 15 and g > b + 15, (index, r, g, b)
            # The check sees where the overlay is: the mask flipped or transposed does not fit.
            for wrong in (mask[::-1], mask[:, ::-1], mask.T):
                assert agreement(tint, wrong)[0] < 0.9 or agreement(tint, wrong)[1] > 0.01
            if index == 0 and (keep := os.environ.get("GVAE_OHIF_SCREENSHOT")):
                Image.fromarray(screen.astype(np.uint8)).save(Path(keep), optimize=True)


@pytest.fixture
def pacs_stub():
    """A DICOMweb stand-in on loopback: answers every GET with what it was asked (JSON), 404
    under /dicom-web/missing; yields its root URL."""

    class Stub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps(
                {"path": self.path, "accept": self.headers["Accept"], "host": self.headers["Host"]}
            ).encode()
            self.send_response(404 if "/missing" in self.path else 200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str, accept: str = "*/*") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, rsp.headers["Content-Type"], rsp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_viewer_serves_app_config_spa_routes_and_proxies_dicomweb(tmp_path, pacs_stub):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / "app.js").write_text("var x;")
    (tmp_path / "secret.txt").write_text("outside dist")
    with Viewer(dist, pacs_stub, notices=False) as viewer:
        status, kind, body = _get(viewer.url + "/app-config.js")
        assert status == 200 and kind == "application/javascript"
        config = json.loads(body.decode().removeprefix("window.config = ").rstrip(";\n"))
        [source] = config["dataSources"]
        roots = {k: source["configuration"][k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
        assert set(roots.values()) == {"/dicom-web"}  # same origin: no CORS
        assert config["disableConfirmationPrompts"] is True
        assert config["investigationalUseDialog"] == {"option": "never"}
        assert _get(viewer.url + "/app.js")[1] == "application/javascript"
        # The single-page app's routes, and anything outside dist, are its index page.
        for route in ("/viewer?StudyInstanceUIDs=1.2.3", "/../secret.txt", "/%2e%2e/secret.txt"):
            assert _get(viewer.url + route)[2] == b"<html>OHIF</html>", route
        # DICOMweb goes to the PACS: path, query, Accept and Host as the browser sent them.
        status, kind, body = _get(
            viewer.url + "/dicom-web/studies?limit=1", "application/dicom+json"
        )
        asked = json.loads(body)
        assert (status, kind) == (200, "application/dicom+json")
        assert asked == {
            "path": "/dicom-web/studies?limit=1",
            "accept": "application/dicom+json",
            "host": f"127.0.0.1:{viewer.port}",
        }
        assert _get(viewer.url + "/dicom-web/missing")[0] == 404  # the PACS's answer, passed on
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    with Viewer(dist, dead) as viewer:
        status, _, body = _get(viewer.url + "/dicom-web/studies")
        assert status == 502 and b"did not answer" in body
    with pytest.raises(ValueError, match="http"):
        Viewer(dist, "ftp://pacs/dicom-web")


def test_view_command_errors(tmp_path, capsys):
    args = ["view", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--npm-dir", str(tmp_path)]
    assert main(args) == 2
    assert "package.json: cannot read the npm manifest" in capsys.readouterr().err
    assert main(["view", "--npm-dir", str(REPO / "docs" / "ohif")]) == 2
    assert "--dicomweb URL is required" in capsys.readouterr().err
