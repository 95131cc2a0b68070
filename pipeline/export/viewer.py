"""OHIF, the web DICOM viewer, on loopback in front of a PACS's DICOMweb API (``gvae view``).

The viewer is the prebuilt static ``dist/`` of the npm package ``@ohif/app``, in the version
pinned by ``docs/ohif/package.json`` and its ``package-lock.json`` (installed with ``npm ci``
into ``docs/ohif/node_modules``, git-ignored, when missing or another version). The lock holds
the app alone: its JavaScript dependencies are bundled into ``dist/``, nothing is built here.

One small HTTP server (standard library) serves three things on one origin, so the browser
makes no cross-origin request and the PACS needs no CORS setup:

- ``/app-config.js``: OHIF's configuration, written here, with one DICOMweb data source whose
  QIDO-RS and WADO-RS roots are this server's ``/dicom-web``;
- ``/dicom-web/...``: passed on to the PACS's DICOMweb root (e.g. Orthanc's DICOMweb plugin at
  ``http://127.0.0.1:8042/dicom-web``), method, body and ``Accept`` header as they came. The
  ``Host`` header goes along too, so the absolute BulkDataURIs a server writes into its JSON
  metadata point back at this server;
- everything else: a file of ``dist/``, or ``index.html`` for the viewer's own routes
  (``/viewer?StudyInstanceUIDs=...``), as OHIF's single-page app expects.

SEGs are shown without OHIF's "load this segmentation?" prompt (``disableConfirmationPrompts``):
a SEG series opened from the study browser is drawn over the image it references at once.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.npm import NpmError, ensure_installed, locked

NPM_DIR = Path("docs/ohif")
PACKAGE = "@ohif/app"
PROXY_PREFIX = "/dicom-web"
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business, never forwarded.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class ViewerError(RuntimeError):
    """The viewer cannot be installed or served; the message names the file or the problem."""


def install(npm_dir: Path = NPM_DIR) -> Path:
    """Install the pinned ``@ohif/app`` if needed; return its ``dist/`` folder.

    Raises ``ViewerError`` when npm is missing or fails, or ``dist/index.html`` is absent.
    """
    try:
        with locked(npm_dir, ".ohif.lock"):
            ensure_installed(npm_dir, [PACKAGE])
    except NpmError as exc:
        raise ViewerError(str(exc)) from None
    dist = npm_dir / "node_modules" / PACKAGE / "dist"
    if not (dist / "index.html").is_file():
        raise ViewerError(f"{dist}: no index.html (is {PACKAGE} a prebuilt release?)")
    return dist


def app_config(name: str = "PACS", notices: bool = True) -> str:
    """Return OHIF's ``app-config.js`` for one DICOMweb source at this origin's ``/dicom-web``.

    The keys are those of OHIF 3's ``dicomweb`` data source (``@ohif/extension-default``);
    the roots are relative, so the page asks the server it came from. ``notices`` False drops
    OHIF's first-visit notes (the "investigational use only" banner and the guided tour), which
    would cover the image in a screenshot.
    """
    root = PROXY_PREFIX
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": name,
            "name": "dicomweb",
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            # Orthanc's DICOMweb plugin answers includefield and fuzzy matching.
            "qidoSupportsIncludeField": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsReject": False,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": [] if notices else [{"ohif.tours": {"$set": []}}],
        "investigationalUseDialog": {"option": "configure" if notices else "never"},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "disableConfirmationPrompts": True,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


def _handler(dist: Path, pacs_root: str, config_js: bytes) -> type:
    """The request handler class for ``Viewer``, bound to its folder, PACS and config."""
    dist = dist.resolve()
    pacs_root = pacs_root.rstrip("/")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass  # a browser asks hundreds of files; the console stays quiet

        def _proxy(self) -> None:
            url = pacs_root + self.path[len(PROXY_PREFIX) :]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_HEADERS and k.lower() != "accept-encoding"
            }
            req = urllib.request.Request(url, data=body, headers=headers, method=self.command)
            try:
                rsp = urllib.request.urlopen(req, timeout=60)  # noqa: S310 - the PACS's URL
            except urllib.error.HTTPError as err:
                rsp = err
            except (urllib.error.URLError, OSError) as exc:
                self.send_error(502, f"PACS at {pacs_root} did not answer: {exc}")
                return
            with rsp:
                data = rsp.read()
                self.send_response(rsp.status)
                for key, value in rsp.headers.items():
                    if key.lower() not in HOP_HEADERS | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        def _static(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/app-config.js":
                self.send_response(200)
                self.send_header("Content-Type", "application/javascript")
                self.send_header("Content-Length", str(len(config_js)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(config_js)
                return
            target = (dist / path.lstrip("/")).resolve()
            if not target.is_relative_to(dist) or not target.is_file():
                self.path = "/index.html"  # a route of the single-page app
            super().do_HEAD() if self.command == "HEAD" else super().do_GET()

        def _dispatch(self) -> None:
            if self.path == PROXY_PREFIX or self.path.startswith(PROXY_PREFIX + "/"):
                self._proxy()
            elif self.command in {"GET", "HEAD"}:
                self._static()
            else:
                self.send_error(405)

        do_GET = do_HEAD = do_POST = _dispatch

    Handler.extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "application/javascript",
        ".mjs": "application/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }
    return Handler


@dataclass
class Viewer:
    """OHIF's ``dist`` served on ``host:port`` with ``/dicom-web`` passed on to ``pacs_root``.

    ``port`` 0 picks a free one; ``url`` says which after ``start``. Use as a context manager,
    or ``start`` / ``stop``.
    """

    dist: Path
    pacs_root: str
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "PACS"
    notices: bool = True
    _server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (Path(self.dist) / "index.html").is_file():
            raise ViewerError(f"{self.dist}: not an OHIF dist folder (no index.html)")
        scheme = urllib.parse.urlsplit(self.pacs_root).scheme
        if scheme not in {"http", "https"}:
            raise ValueError(f"pacs_root must be an http(s) URL, got {self.pacs_root!r}")

    @property
    def url(self) -> str:
        """The viewer's base URL, e.g. ``http://127.0.0.1:3000``."""
        return f"http://{self.host}:{self.port}"

    def study_url(self, study_instance_uid: str) -> str:
        """The URL that opens one study in OHIF's basic viewer."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"

    def start(self) -> Viewer:
        """Serve in a background thread; return ``self``."""
        config = app_config(self.name, self.notices).encode()
        handler = _handler(Path(self.dist), self.pacs_root, config)
        self._server = http.server.ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Viewer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
