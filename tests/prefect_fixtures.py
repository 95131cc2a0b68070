"""A real ``prefect server start`` on loopback for the schedule test.

Home folder and SQLite database live in the test's tmp folder; every inherited ``PREFECT_*``
variable is dropped so no profile or API URL of the machine leaks in. The scheduler loops every
second (``PREFECT_SERVER_SERVICES_SCHEDULER_*``); services the test does not need are off. The
server runs in its own process group and is stopped through that group (TERM, then KILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# No telemetry and no UI: nothing to serve or send in a test.
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"}
SCHEDULER = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
}
UNUSED_SERVICES = (
    "LATE_RUNS",
    "FOREMAN",
    "CANCELLATION_CLEANUP",
    "PAUSE_EXPIRATIONS",
    "REPOSSESSOR",
    "TRIGGERS",
)


@dataclass
class PrefectServer:
    """One ``prefect server start`` process: its folder, port and process."""

    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def start(self) -> PrefectServer:
        """Launch the server and return at once (``wait_healthy`` waits for it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(QUIET)
        env.update(SCHEDULER)
        env.update({f"PREFECT_SERVER_SERVICES_{s}_ENABLED": "false" for s in UNUSED_SERVICES})
        env["PREFECT_HOME"] = str(self.folder)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
            f"sqlite+aiosqlite:///{self.folder / 'server.db'}"
        )
        cmd = [sys.executable, "-m", "prefect", "server", "start"]
        with open(self.log, "wb") as sink:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [*cmd, "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: uvicorn + children stop together
            )
        return self

    def wait_healthy(self, polls: int = 900) -> str:
        """Poll ``/api/health`` (every 0.2 s, ``polls`` times); return the API URL.

        Raises ``RuntimeError`` with the server's log when it exits or never answers.
        """
        for _ in range(polls):
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"prefect server is not running:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as rsp:
                    if json.loads(rsp.read()) is True:
                        return self.api_url
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prefect server never answered {self.api_url}/health:\n{self.log}")

    def stop(self) -> None:
        """Stop the server's process group (TERM, then KILL) and wait for the process."""
        proc, self.process = self.process, None
        stop_group(proc)


def stop_group(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """Stop a child started with ``start_new_session``: its process group, TERM then KILL.

    The group, even if its leader is gone: the server's uvicorn and a worker's flow-run
    processes run as children of the process we started.
    """
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
