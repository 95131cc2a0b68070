"""Prefect flows: the DVC DAG stage by stage on a scratch DVC repo, the clinician export, and the
nightly deployment scheduled by a real local Prefect server.

The flow tests run against ``prefect_test_harness`` (a temporary API on a temporary SQLite
database). That API runs no scheduler, so the schedule test starts ``prefect server start`` on
loopback with its home and database under the test's tmp folder, and stops it by its PID.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.params.loader import ParamsError, load_section

from .ct_fixtures import toy_pairs, write_toy_slices
from .export_fixtures import ORTHANC_AET, SENDER_AET, Orthanc, free_port, write_synthetic_set
from .prefect_fixtures import QUIET, PrefectServer

SPLITS = {"train": ["PANCREAS_0001", "PANCREAS_0002"], "test": ["PANCREAS_0003"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server (with scheduler), launched but not waited for."""
    started = PrefectServer(tmp_path_factory.mktemp("prefect-server"), free_port()).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def harness(server):
    """A temporary Prefect API for the module's flow runs.

    Asks for ``server`` only to launch it early: its first start (database migrations) then
    overlaps the flow tests instead of adding to them.
    """
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**QUIET, "DVC_NO_ANALYTICS": "1"}.items():
            mp.setenv(key, value)
        with prefect_test_harness(server_startup_timeout=180):
            yield


def scratch_repo(root: Path, stages: dict, flows: dict) -> Path:
    """A git + DVC repo at ``root`` with ``stages`` as dvc.yaml and ``flows`` as params."""
    root.mkdir(parents=True, exist_ok=True)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump({"flows": flows}))
    return root


# Four stages (one a foreach of two): a -> b@x, b@y -> c. Every command appends its name to
# order.log; c writes a metrics file, the sample grids and a table the test puts in src/, and
# the HTML report.
DAG = {
    "a": {"cmd": "echo a >> order.log && echo 1 > a.txt", "outs": ["a.txt"]},
    "b": {
        "foreach": ["x", "y"],
        "do": {
            "cmd": "echo b@${item} >> order.log && cat a.txt > b-${item}.txt",
            "deps": ["a.txt"],
            "outs": ["b-${item}.txt"],
        },
    },
    "c": {
        "cmd": "echo c >> order.log && mkdir -p data/report && cp -r src/models data/models"
        " && cp src/segment.md data/report/segment.md"
        " && printf '<html></html>' > data/report/index.html"
        ' && printf \'{"loss": 0.25, "eval": {"acc": 0.5}}\' > metrics.json',
        "deps": ["b-x.txt", "b-y.txt"],
        "outs": ["data/models", "data/report"],
        "metrics": [{"metrics.json": {"cache": False}}],
    },
}
FLOWS = {
    "retries": 1,
    "retry_delay_s": 0,
    "sample_grids": ["data/models/**/samples/*.png"],
    "grid_kb": 40,
    "tables": {"Segmentation": "data/report/segment.md", "CT quality": "data/report/quality.md"},
    "report": "data/report/index.html",
}
# A row of the segmentation table as `gvae segment` writes it: Dice and its paired differences.
SEGMENT_ROW = "| real+cgvae | 0.5 | 0.412 [0.380, 0.441] | +0.021 [-0.004, 0.047] |"


def write_dag_inputs(repo: Path) -> dict[str, bytes]:
    """The files stage c of ``DAG`` copies: two grids of model m (a small one at step 2 and a
    640x480 noise grid, about 900 KB, at step 10), one small grid of model n, and a table.
    Returns the PNG bytes by their path under data/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grids = {
        "models/m/samples/step-2.png": rng.integers(0, 255, (48, 64), dtype=np.uint8),
        "models/m/samples/step-10.png": rng.integers(0, 255, (480, 640, 3), dtype=np.uint8),
        "models/n/samples/step-1.png": np.tile(np.arange(64, dtype=np.uint8), (48, 1)),
    }
    written = {}
    for rel, pixels in grids.items():
        path = repo / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        written[rel] = path.read_bytes()
    header = "| condition | fraction | Dice [95% CI] | Dice - real [95% CI] |"
    (repo / "src/segment.md").write_text(
        f"Test Dice.\n\n{header}\n|---|---|---|---|\n{SEGMENT_ROW}\n"
    )
    return written


def embedded_pngs(markdown: str) -> dict[str, bytes]:
    """The PNGs embedded in ``markdown`` as data URIs, by their alt text's path."""
    found = re.findall(
        r"!\[(\S+) \(\d+x\d+\)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown
    )
    return {alt: base64.b64decode(data) for alt, data in found}


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _task_runs(flow_run_id, expected: int) -> list:
    """Task runs of a flow run, by start time; waits for the API to record ``expected``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with _client() as client:
        for _ in range(100):
            runs = client.read_task_runs(flow_run_filter=flt)
            if len(runs) >= expected and all(r.start_time for r in runs):
                break
            time.sleep(0.2)
    return sorted(runs, key=lambda r: r.start_time)


def _log_lines(flow_run_id, wanted: str) -> list[str]:
    """Log messages of a flow run's tasks; waits until one contains ``wanted`` (logs are sent
    to the API in batches)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with _client() as client:
        for _ in range(100):
            lines = [log.message for log in client.read_logs(log_filter=flt) if log.task_run_id]
            if any(wanted in line for line in lines):
                break
            time.sleep(0.2)
    return lines


def _artifacts(flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with _client() as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=flt)}


def test_stage_order_comes_from_dvc(tmp_path):
    from pipeline.flows.dag import stage_order

    repo = scratch_repo(tmp_path / "repo", DAG, FLOWS)
    assert stage_order(repo) == ["a", "b@x", "b@y", "c"]
    assert stage_order(repo, ["b@y"]) == ["a", "b@y"]
    assert stage_order(repo, ["b"]) == ["a", "b@x", "b@y"]  # a foreach group, as dvc repro
    with pytest.raises(ValueError, match=r"repo: DVC: .*'nope' not found"):
        stage_order(repo, ["nope"])
    with pytest.raises(ValueError, match="not inside of a DVC repository"):
        stage_order(tmp_path)


def test_dvc_dag_runs_stages_in_order_and_publishes_artifacts(harness, tmp_path):
    from PIL import Image

    from pipeline.flows.dag import dvc_dag

    repo = scratch_repo(tmp_path / "repo", DAG, FLOWS)
    grids = write_dag_inputs(repo)
    state = dvc_dag(root=str(repo), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["stages"] == ["a", "b@x", "b@y", "c"]
    assert (repo / "order.log").read_text().split() == ["a", "b@x", "b@y", "c"]
    tasks = _task_runs(state.state_details.flow_run_id, expected=5)
    assert [t.name for t in tasks] == ["a", "b@x", "b@y", "c", "artifacts"]
    assert all(t.state.is_completed() and t.run_count == 1 for t in tasks)
    # dvc.lock, DVC's own record, holds every stage the flow ran.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"a", "b@x", "b@y", "c"}

    arts = _artifacts(state.state_details.flow_run_id)
    assert set(arts) == {"metrics-metrics-json", "headline-tables", "sample-grids", "html-report"}
    table = arts["metrics-metrics-json"]
    assert table.type == "table"
    assert json.loads(table.data) == [
        {"metric": "loss", "value": 0.25},
        {"metric": "eval.acc", "value": 0.5},
    ]
    # The headline tables inline: the segmentation table's rows; the quality table not yet.
    tables = arts["headline-tables"]
    assert tables.type == "markdown" and SEGMENT_ROW in tables.data
    assert "## CT quality\n\nNot produced yet (no `data/report/quality.md`)." in tables.data
    # Every grid linked; the newest of each folder embedded, shrunk to flows.grid_kb if larger.
    shown = arts["sample-grids"]
    assert shown.type == "markdown"
    for rel in grids:
        assert (repo / "data" / rel).resolve().as_uri() in shown.data
    embedded = embedded_pngs(shown.data)
    big, small = "data/models/m/samples/step-10.png", "data/models/n/samples/step-1.png"
    assert set(embedded) == {big, small}  # not m's older step-2
    assert embedded[small] == grids["models/n/samples/step-1.png"]  # fits: the file itself
    assert len(grids["models/m/samples/step-10.png"]) > 40 * 1024 >= len(embedded[big])
    with Image.open(io.BytesIO(embedded[big])) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        width, height = im.size
    assert width < 640 and abs(width / height - 640 / 480) < 0.02  # downscaled, same shape
    assert f"({width}x{height})" in shown.data
    assert arts["html-report"].type == "markdown"  # Prefect stores a link as markdown
    assert (repo / "data/report/index.html").resolve().as_uri() in arts["html-report"].data

    # Again, up to one target: DVC finds everything up to date and runs no command.
    again = dvc_dag(root=str(repo), targets=["b@y"])
    assert again["stages"] == ["a", "b@y"]
    assert (repo / "order.log").read_text().split() == ["a", "b@x", "b@y", "c"]


def test_dvc_dag_retries_then_fails_with_the_stage_name(harness, tmp_path):
    from pipeline.flows.dag import dvc_dag

    stages = {
        # Fails on its first attempt only: the retry makes it pass.
        "flaky": {
            "cmd": "echo x >> flaky.attempts && [ $(wc -l < flaky.attempts) -ge 2 ]"
            " && echo ok > flaky.txt",
            "outs": ["flaky.txt"],
        },
        "broken": {
            "cmd": "echo x >> broken.attempts && echo 'disk on fire' >&2 && exit 3",
            "deps": ["flaky.txt"],
            "outs": ["broken.txt"],
        },
        "after": {"cmd": "echo ran > after.txt", "deps": ["broken.txt"], "outs": ["after.txt"]},
    }
    repo = scratch_repo(tmp_path / "repo", stages, FLOWS)
    state = dvc_dag(root=str(repo), return_state=True)
    assert state.is_failed()
    assert "DVC stage 'broken' failed" in state.message
    with pytest.raises(RuntimeError, match=r"(?s)DVC stage 'broken' failed.*disk on fire"):
        state.result()
    assert len((repo / "flaky.attempts").read_text().split()) == 2
    assert len((repo / "broken.attempts").read_text().split()) == 2  # retries: 1
    assert not (repo / "after.txt").exists()  # nothing downstream of the failure ran
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"flaky"}
    # The task's log carries dvc's output, the command's stderr included.
    lines = _log_lines(state.state_details.flow_run_id, "disk on fire")
    assert "Running stage 'broken':" in lines and "disk on fire" in lines
    tasks = {t.name: t for t in _task_runs(state.state_details.flow_run_id, expected=2)}
    assert set(tasks) == {"flaky", "broken"}
    assert tasks["flaky"].state.is_completed() and tasks["flaky"].run_count == 2
    assert tasks["broken"].state.is_failed() and tasks["broken"].run_count == 2


def test_clinician_export_to_a_folder(harness, tmp_path):
    from pipeline.flows.export import clinician_export

    write_toy_slices(tmp_path / "data/slices", SPLITS, per_case=6, size=32)
    image, mask = toy_pairs(8, 32, seed=7)
    write_synthetic_set(tmp_path / "syn", image, mask, model="vae", trained_on=SPLITS["train"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"flows": {"retries": 0}}))
    state = clinician_export(
        model="vae", n=3, synthetic="syn", out="to-clinic", root=str(tmp_path), return_state=True
    )
    assert state.is_completed(), state.message
    result = state.result()
    out = tmp_path / "to-clinic"
    receipt = json.loads((out / "receipt.json").read_text())
    assert result == {
        "out": str(out),
        "study_instance_uid": receipt["study"]["study_instance_uid"],
        "patient_id": receipt["study"]["patient_id"],
        "instances": 6,
        "pacs_missing": None,
    }
    assert sorted(p.name for p in (out / "dicom").iterdir()) == [
        *(f"image_{i:04d}.dcm" for i in (1, 2, 3)),
        *(f"seg_{i:04d}.dcm" for i in (1, 2, 3)),
    ]
    assert receipt["source"]["model"] == "vae" and receipt["source"]["exported"] == 3
    assert receipt["near_copy_gate"]["ran"]  # the flow passed the real slices to the gate
    [art] = _artifacts(state.state_details.flow_run_id).values()
    assert art.key == "clinician-export" and receipt["study"]["study_instance_uid"] in art.data

    # A set of another model, and a model outside ct.models, are refused before any writing.
    with pytest.raises(ValueError, match=r"syn: a synthetic set of model 'vae', not of 'gvae'"):
        clinician_export(model="gvae", n=3, synthetic="syn", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"model 'dcgan' is not one of ct.models"):
        clinician_export(model="dcgan", n=3, root=str(tmp_path))


def test_clinician_export_to_a_pacs(harness, tmp_path):
    """Delivery to a PACS that is down is retried and fails naming it; Orthanc gets the set."""
    from pipeline.flows.export import clinician_export

    image, mask = toy_pairs(4, 32, seed=3)
    write_synthetic_set(tmp_path / "syn", image, mask, model="vae")
    flows = {"retries": 1, "retry_delay_s": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"flows": flows}))
    request = {
        "model": "vae",
        "n": 2,
        "synthetic": "syn",
        "called_aet": ORTHANC_AET,
        "calling_aet": SENDER_AET,
        "allow_near_copies": True,  # no real slices here: delivery is what is tested
        "root": str(tmp_path),
    }
    down = free_port()  # nothing listens there
    state = clinician_export(**request, pacs=f"127.0.0.1:{down}", out="down", return_state=True)
    assert state.is_failed()
    assert f"PACS 127.0.0.1:{down} accepted no connection" in state.message
    receipt = json.loads((tmp_path / "down/receipt.json").read_text())
    assert [d["stored"] for d in receipt["deliveries"]] == [0, 0]  # first try + one retry

    orthanc = Orthanc(free_port(), free_port(), tmp_path / "orthanc")
    try:
        orthanc.start()
        result = clinician_export(**request, pacs=f"127.0.0.1:{orthanc.dicom_port}", out="sent")
        receipt = json.loads((tmp_path / "sent/receipt.json").read_text())
        stored = {
            orthanc.get(f"/instances/{i}/tags?short")["0008,0018"]
            for i in orthanc.get("/instances")
        }
    finally:
        orthanc.stop()
    assert result["pacs_missing"] == 0 and result["instances"] == 4
    assert stored == {r["sop_instance_uid"] for r in receipt["instances"]}


def test_flows_params_are_validated(tmp_path):
    p = tmp_path / "params.yaml"
    for bad, message in [
        ({"cron": "0 25 * * 1"}, "flows.cron: Value error, Invalid cron string"),
        ({"timezone": "Mars/Olympus"}, "flows.timezone: Value error, not an IANA timezone"),
        ({"deployment": "night ly"}, "flows.deployment: Value error, deployment name"),
        ({"export": {"out": "x/{patient}"}}, "flows.export.out: Value error, only {model}"),
        ({"crn": "0 2 * * 1"}, "unknown key 'flows.crn'"),
    ]:
        p.write_text(yaml.safe_dump({"flows": bad}))
        with pytest.raises(ParamsError, match=message.replace("{", r"\{").replace("(", r"\(")):
            load_section(p, "flows")


def test_serve_needs_an_api(tmp_path, monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("flows: {}\n")
    args = ["serve", "--params", str(tmp_path / "params.yaml"), "--root"]
    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert main([*args, str(tmp_path)]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "elsewhere")]) == 2
    assert "elsewhere: no dvc.yaml" in capsys.readouterr().err


def test_serve_root_moves_the_params_default(tmp_path, monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.stages.serve import params_path

    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    for folder in (repo, elsewhere):
        folder.mkdir()
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "params.yaml").write_text(yaml.safe_dump({"flows": {"cron": "0 25 * * 1"}}))
    (elsewhere / "params.yaml").write_text("flows: {}\n")  # valid: must not be the one read
    monkeypatch.chdir(elsewhere)
    assert params_path(repo, "params.yaml") == repo / "params.yaml"
    assert params_path(repo, elsewhere / "params.yaml") == elsewhere / "params.yaml"
    assert params_path(Path("."), "params.yaml") == Path("params.yaml")  # no --root: cwd's

    # No API: whatever params are read, `main` returns before it could serve (and block).
    with temporary_settings(updates={PREFECT_API_URL: None}):
        # The default --params is DIR's: its bad cron fails before the API is checked.
        assert main(["serve", "--root", str(repo)]) == 2
        assert "flows.cron: Value error, Invalid cron string" in capsys.readouterr().err
        (repo / "params.yaml").write_text("flows: {}\n")
        assert main(["serve", "--root", str(repo)]) == 2  # params read; the next check fails
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def test_nightly_deployment_is_scheduled_by_a_prefect_server(server, tmp_path, capsys):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.flows.deploy import register

    # Mondays 06:30 in Berlin: 05:30 or 04:30 UTC depending on daylight saving, never 06:30.
    tz = "Europe/Berlin"
    flows = {"cron": "30 6 * * 1", "timezone": tz, "deployment": "nightly-test"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"flows": flows}))
    api = server.wait_healthy()
    with temporary_settings(updates={PREFECT_API_URL: api}):
        ids = register(tmp_path, tmp_path / "params.yaml")
        assert set(ids) == {"dvc-dag/nightly-test", "clinician-export/clinician"}
        flt = DeploymentFilter(id=DeploymentFilterId(any_=[ids["dvc-dag/nightly-test"]]))
        with _client() as client:
            deployment = client.read_deployment(ids["dvc-dag/nightly-test"])
            runs = []
            for _ in range(300):  # the scheduler loops every second
                runs = client.read_flow_runs(deployment_filter=flt)
                if len(runs) >= 3:
                    break
                time.sleep(0.2)
            on_request = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[ids["clinician-export/clinician"]])
                )
            )
        # `gvae serve --register-only` applies the same deployments again: same IDs.
        (tmp_path / "dvc.yaml").write_text("stages: {}\n")
        args = ["serve", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]
        assert main([*args, "--register-only"]) == 0
    said = capsys.readouterr().out
    assert all(f"gvae serve: registered {name} ({ident})" in said for name, ident in ids.items())
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 6 * * 1", tz)
    # One DAG run at a time: a second trigger is enqueued until the first ends.
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
    assert deployment.parameters == {"root": str(tmp_path), "params": str(tmp_path / "params.yaml")}
    assert len(runs) >= 3, "the server's scheduler created no runs"
    assert on_request == []  # the export deployment has no schedule
    assert {r.state.name for r in runs} == {"Scheduled"}
    times = sorted(r.expected_start_time for r in runs)
    local = [t.astimezone(ZoneInfo(tz)) for t in times]
    print(
        "scheduled runs:",
        ", ".join(f"{t.isoformat()} ({u:%H:%M} UTC)" for t, u in zip(local, times, strict=True)),
    )
    assert all((t.weekday(), t.hour, t.minute) == (0, 6, 30) for t in local)
    assert all(t.astimezone(dt.timezone.utc).hour in (4, 5) for t in times)
    assert [(b.date() - a.date()).days for a, b in zip(local, local[1:], strict=False)] == [7] * (
        len(local) - 1
    )
    assert dt.timedelta(0) < times[0] - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=7)
