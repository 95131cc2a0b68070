"""Prefect as a service: the committed prefect.yaml, deployed to a real loopback Prefect server
on a process work pool, and run by ``prefect worker start``.

The deployments of prefect.yaml are the ones ``gvae serve`` builds (both come from
``pipeline.flows.deploy.specs``, and a test checks the committed file against params.yaml).
The worker runs the DAG deployment in a scratch DVC repo named by ``$GVAE_ROOT``, as a
service would in the real one: once with ``--run-once``, then as a long-running worker given
two back-to-back triggers, which the deployment's concurrency limit runs one after the other.
Every Prefect command gets its own home folder and the server's URL, nothing of the machine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.flows.deploy import ROOT_ENV
from pipeline.params.loader import load_section

from .export_fixtures import free_port
from .prefect_fixtures import QUIET, PrefectServer, stop_group
from .test_flows import scratch_repo

REPO = Path(__file__).resolve().parents[1]
POOL = load_section(REPO / "params.yaml", "flows").work_pool
DAG = f"dvc-dag/{load_section(REPO / 'params.yaml', 'flows').deployment}"
# The stage a worker's run executes: it appends its start and end times to runs.log (not an
# output, so a later run keeps it) and always runs (`always_changed`).
STAGE = {
    "x": {
        "cmd": "echo start $(date +%s.%N) >> runs.log && sleep 2 && echo ok > x.txt"
        " && echo end $(date +%s.%N) >> runs.log",
        "outs": ["x.txt"],
        "always_changed": True,
    }
}
FLOWS = {"retries": 0, "retry_delay_s": 0, "sample_grids": [], "report": "none.html"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A loopback Prefect server with the process work pool and prefect.yaml's deployments;
    yields ``(api url, environment for Prefect commands)``."""
    folder = tmp_path_factory.mktemp("prefect-service")
    server = PrefectServer(folder / "server", free_port()).start()
    try:
        api = server.wait_healthy()
        # Without GVAE_ROOT: `prefect deploy` would write its value into the pull step.
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != ROOT_ENV
        }
        env.update(QUIET)
        env.update(
            {"PREFECT_API_URL": api, "PREFECT_HOME": str(folder / "home"), "DVC_NO_ANALYTICS": "1"}
        )
        prefect(env, folder, "work-pool", "create", POOL, "--type", "process")
        # From another folder than the repo: prefect.yaml names no path of its own.
        said = prefect(
            env,
            folder,
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(REPO / "prefect.yaml"),
        )
        assert DAG in said, said
        yield api, env
    finally:
        server.stop()


def prefect(env: dict, cwd: Path, *args: str, timeout: float = 300) -> str:
    """Run ``prefect ARGS`` and return its output; fail the test with it when it fails."""
    res = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"prefect {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _client(api: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        return get_client(sync_client=True)


def trigger(api: str, name: str) -> str:
    """Create a run of deployment ``name`` now (as ``prefect deployment run``); its ID."""
    with _client(api) as client:
        deployment = client.read_deployment_by_name(name)
        return client.create_flow_run_from_deployment(deployment.id).id


def wait_final(api: str, run_ids: list, polls: int = 1500) -> list:
    """The flow runs ``run_ids`` once all are in a final state (polls every 0.2 s)."""
    with _client(api) as client:
        for _ in range(polls):
            runs = [client.read_flow_run(i) for i in run_ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
            time.sleep(0.2)
    raise AssertionError(f"flow runs never finished: {[(r.id, r.state) for r in runs]}")


def spans(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every stage command, from the times it appended to ``log``."""
    words = [line.split() for line in log.read_text().splitlines()]
    starts = [float(t) for w, t in words if w == "start"]
    ends = [float(t) for w, t in words if w == "end"]
    return list(zip(starts, ends, strict=True))


def test_prefect_yaml_is_what_gvae_serve_builds(tmp_path):
    """The committed prefect.yaml is `gvae serve --prefect-yaml` of params.yaml, and its
    deployments have the names, entrypoints, schedule and concurrency `gvae serve` registers."""
    from pipeline.flows.deploy import deployments

    committed = yaml.safe_load((REPO / "prefect.yaml").read_text())
    out = tmp_path / "prefect.yaml"
    args = ["serve", "--root", str(REPO), "--params", str(REPO / "params.yaml")]
    assert main([*args, "--prefect-yaml", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == committed, (
        "prefect.yaml is stale: run `gvae serve --prefect-yaml prefect.yaml`"
    )
    [pull] = committed["pull"]
    assert pull == {
        "prefect.deployments.steps.set_working_directory": {"directory": f"{{{{ ${ROOT_ENV} }}}}"}
    }
    served = {d.name: d for d in deployments(REPO, REPO / "params.yaml")}
    assert [d["name"] for d in committed["deployments"]] == list(served)
    for entry in committed["deployments"]:
        runner = served[entry["name"]]
        assert entry["work_pool"]["name"] == POOL
        assert entry["entrypoint"] == runner.entrypoint
        assert entry["description"] == runner.description and entry["tags"] == runner.tags
        assert entry["parameters"] == {"root": ".", "params": "params.yaml"}
        assert set(runner.parameters) == {"root", "params"}  # gvae serve's are absolute
        schedules = [
            {"cron": s.schedule.cron, "timezone": s.schedule.timezone} for s in runner.schedules
        ]
        assert entry.get("schedules", []) == schedules
        limit = runner.concurrency_limit
        options = runner.concurrency_options
        expected = (
            {"limit": limit, "collision_strategy": options.collision_strategy.value}
            if limit
            else None
        )
        assert entry.get("concurrency_limit") == expected
    assert committed["deployments"][0]["concurrency_limit"] == {
        "limit": 1,
        "collision_strategy": "ENQUEUE",
    }


def test_a_worker_runs_the_dag_deployment_from_the_work_pool(deployed, tmp_path):
    api, env = deployed
    repo = scratch_repo(tmp_path / "repo", STAGE, FLOWS)
    run_id = trigger(api, DAG)
    said = prefect(
        {**env, ROOT_ENV: str(repo)},
        tmp_path,
        *("worker", "start", "--pool", POOL, "--type", "process", "--run-once"),
    )
    [run] = wait_final(api, [run_id])
    assert run.state.is_completed(), f"{run.state}\n{said}"
    assert run.parameters == {"root": ".", "params": "params.yaml"}
    # It ran in $GVAE_ROOT: DVC ran the stage there and recorded it in dvc.lock.
    assert (repo / "x.txt").read_text() == "ok\n"
    assert len(spans(repo / "runs.log")) == 1
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == {"x"}
    with _client(api) as client:
        deployment = client.read_deployment(run.deployment_id)
    assert run.work_pool_name == POOL
    # The worker, not `prefect deploy`, filled in the repo: the deployment keeps the variable.
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $GVAE_ROOT }}"}}
    ]


def test_two_triggers_of_the_dag_deployment_run_one_after_the_other(deployed, tmp_path):
    """The second run waits for the deployment's one concurrency slot (ENQUEUE), it is not
    dropped, and the two runs, not only their stages, do not overlap."""
    api, env = deployed
    repo = scratch_repo(tmp_path / "repo", STAGE, FLOWS)
    first, second = trigger(api, DAG), trigger(api, DAG)
    worker_env = {
        **env,
        ROOT_ENV: str(repo),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    log = tmp_path / "worker.log"
    with open(log, "wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
            cwd=tmp_path,
            env=worker_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        runs = wait_final(api, [first, second])
    finally:
        stop_group(worker)
    said = log.read_text()
    assert all(r.state.is_completed() for r in runs), f"{[r.state for r in runs]}\n{said}"
    with _client(api) as client:
        histories = {r.id: [s.name for s in client.read_flow_run_states(r.id)] for r in runs}
    waited = [i for i, names in histories.items() if "AwaitingConcurrencySlot" in names]
    assert waited, f"neither run waited for the concurrency slot: {histories}"
    a, b = sorted(runs, key=lambda r: r.start_time)
    assert a.end_time <= b.start_time, f"the runs overlapped: {a.start_time}-{a.end_time}, {b}"
    [(s1, e1), (s2, e2)] = spans(repo / "runs.log")  # the stage ran once per run
    assert e1 <= s2
    print(json.dumps({str(k): v for k, v in histories.items()}, indent=1))
