"""Unattended runs of the flows: per-stage timeouts, the failure notice, DVC's lock, and the
clinician export's timeouts.

A stage that hangs is stopped after its ``flows`` timeout; a failed run POSTs its notice to a
loopback HTTP receiver; two repro calls on one repo run one after the other; a hung PACS
delivery of the clinician export fails after its timeout. The flow runs use
``prefect_test_harness`` (a temporary API on a temporary SQLite database); the scratch DVC
repos are the ones of ``test_flows``.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.params.loader import ParamsError, load_section

from .ct_fixtures import toy_pairs
from .export_fixtures import free_port, write_synthetic_set
from .prefect_fixtures import QUIET
from .test_flows import scratch_repo

FLOWS = {"retries": 0, "retry_delay_s": 0, "sample_grids": [], "report": "none.html"}


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect API for the module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**QUIET, "DVC_NO_ANALYTICS": "1"}.items():
            mp.setenv(key, value)
        with prefect_test_harness(server_startup_timeout=180):
            yield


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stage_timeout_comes_from_params(tmp_path):
    from pipeline.params.flows import stage_timeout

    p = tmp_path / "params.yaml"
    p.write_text("flows: {timeout_s: 60, stage_timeout_s: {train: 7, train@gvae: 9}}\n")
    settings = load_section(p, "flows")
    assert stage_timeout(settings, "train@vae") == (7, "flows.stage_timeout_s.train")
    assert stage_timeout(settings, "train@gvae") == (9, "flows.stage_timeout_s.train@gvae")
    assert stage_timeout(settings, "sub/dvc.yaml:train") == (7, "flows.stage_timeout_s.train")
    assert stage_timeout(settings, "report") == (60, "flows.timeout_s")
    for bad in ("{timeout_s: 0}", "{stage_timeout_s: {train: -1}}", "{timeout: 5}"):
        p.write_text(f"flows: {bad}\n")
        with pytest.raises(ParamsError, match="flows.(timeout_s|stage_timeout_s.train|timeout)"):
            load_section(p, "flows")


def test_a_stage_past_its_timeout_is_stopped_and_fails_the_run(harness, tmp_path):
    from pipeline.flows.dag import StageTimedOut, dvc_dag

    stages = {
        # `exec`: the shell becomes the sleep, so its PID is the process that must be stopped.
        "hangs": {"cmd": "echo $$ > hangs.pid && exec sleep 600", "outs": ["hangs.txt"]},
        "after": {"cmd": "echo ran > after.txt", "deps": ["hangs.txt"], "outs": ["after.txt"]},
    }
    # Long enough for DVC to start the command on a loaded machine (11.6 s seen at load 10), so
    # the test sees the command itself stopped, not only a stage that never began.
    flows = {**FLOWS, "timeout_s": 600, "stage_timeout_s": {"hangs": 20}}
    repo = scratch_repo(tmp_path / "repo", stages, flows)
    state = dvc_dag(root=str(repo), return_state=True)
    assert state.is_failed()
    said = "DVC stage 'hangs' timed out after 20 s (flows.stage_timeout_s.hangs) and was stopped"
    assert said in state.message
    with pytest.raises(StageTimedOut, match="flows.stage_timeout_s.hangs") as caught:
        state.result()
    assert caught.value.stage == "hangs"
    assert not _alive(int((repo / "hangs.pid").read_text()))  # the command itself was stopped
    assert not (repo / "after.txt").exists()


def test_two_repro_calls_on_one_repo_wait_for_dvcs_lock(tmp_path):
    from pipeline.flows.dag import repro

    # DVC releases its repo lock while a stage's command runs: without the flows' own lock
    # these two independent stages would run side by side.
    cmd = "echo start $(date +%s.%N) > {0}.times && sleep 1 && echo end $(date +%s.%N) >> {0}.times"
    stages = {name: {"cmd": cmd.format(name), "outs": [f"{name}.times"]} for name in ("x", "y")}
    repo = scratch_repo(tmp_path / "repo", stages, FLOWS)
    errors: list[BaseException] = []

    def call(stage: str) -> None:
        try:
            repro(str(repo), stage, 60, "flows.timeout_s", log=lambda line: None)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(s,)) for s in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    spans = sorted(_span(repo / f"{s}.times") for s in ("x", "y"))
    assert spans[0][1] <= spans[1][0], f"the two stages overlapped: {spans}"


def _span(path: Path) -> tuple[float, float]:
    """(start, end) times a stage command wrote to ``path``."""
    times = dict(line.split() for line in path.read_text().splitlines())
    return float(times["start"]), float(times["end"])


def test_a_stage_waiting_past_its_timeout_for_the_lock_fails(tmp_path):
    from pipeline.flows.dag import StageTimedOut, repro
    from pipeline.flows.repo_lock import repo_lock

    repo = scratch_repo(tmp_path / "repo", {"x": {"cmd": "echo x > x.txt"}}, FLOWS)
    with repo_lock(repo, 1):  # another run's stage holds it
        with pytest.raises(StageTimedOut, match=r"'x' timed out after 0.5 s \(flows.timeout_s\)"):
            repro(str(repo), "x", 0.5, "flows.timeout_s", log=lambda line: None)
    assert not (repo / "x.txt").exists()
    repro(str(repo), "x", 60, "flows.timeout_s", log=lambda line: None)  # released: it runs
    assert (repo / "x.txt").read_text() == "x\n"


@contextmanager
def receiver():
    """A loopback HTTP server in a thread; yields ``(url, bodies)``, the JSON bodies POSTed."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/hooks/gvae", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_failed_run_posts_its_notice_to_the_webhook(harness, tmp_path):
    from pipeline.flows.dag import dvc_dag

    stages = {"broken": {"cmd": "echo 'disk on fire' >&2 && exit 3", "outs": ["broken.txt"]}}
    with receiver() as (url, bodies):
        repo = scratch_repo(tmp_path / "repo", stages, {**FLOWS, "notify": {"webhook": url}})
        state = dvc_dag(root=str(repo), return_state=True)
        assert state.is_failed()
        ok = scratch_repo(
            tmp_path / "ok", {"x": {"cmd": "true"}}, {**FLOWS, "notify": {"webhook": url}}
        )
        assert dvc_dag(root=str(ok), return_state=True).is_completed()
    [notice] = bodies  # the completed run sent nothing
    assert notice["flow"] == "dvc-dag" and notice["state"] == "Failed"
    assert notice["stage"] == "broken"
    assert notice["flow_run_id"] == str(state.state_details.flow_run_id)
    assert notice["flow_run"]  # Prefect's generated run name
    assert "DVC stage 'broken' failed (dvc repro exit code" in notice["error"]
    assert "disk on fire" in notice["error"]


def test_notify_params_are_validated(tmp_path):
    p = tmp_path / "params.yaml"
    for bad, message in [
        ("{webhook: 'ftp://x'}", "flows.notify.webhook: Value error, not an http(s) URL"),
        ("{webhook: 'http://x', timeout_s: 0}", "flows.notify.timeout_s"),
        ("{url: 'http://x'}", "unknown key 'flows.notify.url'"),
    ]:
        p.write_text(f"flows: {{notify: {bad}}}\n")
        with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_section(p, "flows")


def test_a_hung_pacs_delivery_fails_after_its_export_timeout(harness, tmp_path, monkeypatch):
    """A delivery that never returns is stopped after ``flows.export.send_timeout_s`` on every
    attempt, and the run fails naming the key; the study itself was built."""
    from pipeline.flows.export import ExportTimedOut, clinician_export
    from pipeline.stages import export

    image, mask = toy_pairs(4, 32, seed=3)
    write_synthetic_set(tmp_path / "syn", image, mask, model="vae")
    flows = {"retries": 1, "retry_delay_s": 0, "export": {"send_timeout_s": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"flows": flows}))
    real_main, attempts = export.main, []

    def hanging_main(args):
        if not args.pacs:
            return real_main(args)  # building the study: the stage's own code
        attempts.append("started")
        for _ in range(1200):  # a PACS that accepts the association and never answers
            time.sleep(0.05)
        attempts.append("finished")
        return 0

    monkeypatch.setattr(export, "main", hanging_main)
    pacs = f"127.0.0.1:{free_port()}"
    state = clinician_export(
        model="vae",
        n=2,
        synthetic="syn",
        out="hung",
        pacs=pacs,
        allow_near_copies=True,
        root=str(tmp_path),
        return_state=True,
    )
    assert state.is_failed()
    said = f"delivery to PACS {pacs} timed out after 1 s (flows.export.send_timeout_s)"
    assert said in state.message
    with pytest.raises(ExportTimedOut, match=r"flows\.export\.send_timeout_s"):
        state.result()
    assert attempts == ["started", "started"]  # first try + one retry, neither ran to its end
    assert json.loads((tmp_path / "hung/receipt.json").read_text())["source"]["exported"] == 2


def test_export_timeouts_are_validated(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("flows: {export: {send_timeout_s: 5, build_timeout_s: 60}}\n")
    limits = load_section(p, "flows").export
    assert (limits.send_timeout_s, limits.build_timeout_s) == (5, 60)
    for bad, message in [
        ("{send_timeout_s: 0}", "flows.export.send_timeout_s"),
        ("{build_timeout_s: -1}", "flows.export.build_timeout_s"),
        ("{timeout_s: 5}", "unknown key 'flows.export.timeout_s'"),
    ]:
        p.write_text(f"flows: {{export: {bad}}}\n")
        with pytest.raises(ParamsError, match=message):
            load_section(p, "flows")
