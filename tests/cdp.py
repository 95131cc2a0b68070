"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), for tests that look at a
page the way a user does: load it, click, wait, read the DOM and take screenshots.

One browser process per ``Browser``, with its own profile folder, on a DevTools port Chromium
picks itself (``--remote-debugging-port=0``, read back from ``DevToolsActivePort``); it is
stopped by its PID. The protocol: https://chromedevtools.github.io/devtools-protocol/
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .export_fixtures import stop_by_pid


def chromium() -> str:
    """Path of a Chromium; fails the test without one (.ci/system-deps installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("headless Chromium is needed (.ci/system-deps installs it)")


class Browser:
    """A headless Chromium with one page, driven over CDP; a context manager.

    ``console`` collects the page's console messages, exceptions and log entries as
    ``"level: text"`` lines, so a failing test can say what the page complained about.
    """

    def __init__(self, profile: Path, width: int = 1280, height: int = 800, timeout: float = 30):
        self.profile, self.width, self.height, self.timeout = profile, width, height, timeout
        self.console: list[str] = []
        self._id = 0
        self._proc: subprocess.Popen | None = None
        self._ws = None

    def __enter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        cmd = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--no-first-run",
            "--hide-scrollbars",
            # WebGL in software: the viewer renders with it (SwiftShader, no GPU needed).
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            f"--user-data-dir={self.profile}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        log = open(self.profile / "chromium.log", "ab")  # noqa: SIM115 - the child keeps it open
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._ws = connect(self._page_socket(), max_size=None, open_timeout=self.timeout)
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {
                    "width": self.width,
                    "height": self.height,
                    "deviceScaleFactor": 1,
                    "mobile": False,
                },
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _page_socket(self) -> str:
        """The WebSocket URL of the browser's one page, once DevTools answers."""
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Chromium exited: {(self.profile / 'chromium.log').read_text()}"
                )
            if port_file.is_file() and (lines := port_file.read_text().split()):
                url = f"http://127.0.0.1:{lines[0]}/json/list"
                try:
                    with urllib.request.urlopen(url, timeout=5) as rsp:
                        pages = [t for t in json.loads(rsp.read()) if t["type"] == "page"]
                except OSError:
                    pages = []
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise RuntimeError("Chromium's DevTools did not answer within the timeout")

    def close(self) -> None:
        """Close the connection and stop the browser by its PID (TERM, then KILL)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()
        proc, self._proc = self._proc, None
        stop_by_pid(proc, timeout=10)

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {text}")
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append(f"{entry['level']}: {entry['text']} {entry.get('url', '')}")

    def send(self, method: str, params: dict | None = None) -> dict:
        """Send one CDP command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self._ws.recv(timeout=self.timeout))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self._event(msg)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, what: str = ""):
        """Poll ``expression`` until it is truthy; return its value. An expression that throws
        (the page's globals not there yet) counts as false. Fails the test with the last error
        and the page's console on timeout."""
        deadline, error = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError as exc:
                value, error = None, exc
            if value:
                return value
            time.sleep(0.25)
        tail = "\n".join(self.console[-30:])
        pytest.fail(
            f"timed out after {timeout} s waiting for {what or expression} "
            f"(last error: {error}); console:\n{tail}"
        )

    def goto(self, url: str) -> None:
        """Navigate the page to ``url`` (returns when navigation starts; wait for content)."""
        self.send("Page.navigate", {"url": url})

    def click(self, x: float, y: float, count: int = 1) -> None:
        """A left mouse click (``count`` 2: a double click) at page coordinates."""
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                event = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": n}
                self.send("Input.dispatchMouseEvent", event)

    def key(self, key: str, code: str, key_code: int) -> None:
        """Press and release one key (e.g. ``"ArrowDown", "ArrowDown", 40``)."""
        for kind in ("keyDown", "keyUp"):
            event = {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code}
            self.send("Input.dispatchKeyEvent", event)

    def screenshot(self) -> bytes:
        """PNG of the page as it is drawn now."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
