"""The DVC DAG as a Prefect flow: one task per DVC stage, run by DVC itself.

DVC stays the single definition of the DAG and ``dvc.lock`` the single record of what produced
what: the stage graph comes from DVC's own index (``Repo.index.graph``, foreach/matrix stages
expanded to ``train@mnist-vae``), and each task runs ``dvc repro --single-item <stage>``, which
skips a stage whose dependencies, params and outputs are unchanged. Prefect adds what DVC lacks
for an unattended run: a schedule, retries, per-stage logs and a run history with artifacts.
After a successful run the outputs go to the repo's default DVC remote, when it has one
(``flows.push``), as ``make repro`` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.flows import DVC
from pipeline.flows.artifacts import publish_artifacts
from pipeline.flows.notify import notify_failure
from pipeline.flows.repo_lock import LockTimeout, repo_lock
from pipeline.params.flows import stage_timeout
from pipeline.params.loader import load_section

# Lines of dvc's output repeated in the exception of a failed stage (all of it is in the log).
TAIL_LINES = 20
# Seconds a timed-out stage gets to exit after SIGINT (DVC removes its lock) before SIGKILL.
STOP_GRACE_S = 10


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and quotes dvc's last lines.

    ``stage`` is the stage's address, for whoever reports the failure (``notify``).
    """

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage

    def __reduce__(self):  # pickled with its stage (Prefect may persist a task's exception)
        return type(self), (str(self), self.stage)


class PushFailed(RuntimeError):
    """``dvc push`` to the default remote exited non-zero; the message quotes dvc's last lines."""


class StageTimedOut(StageFailed):
    """A DVC stage ran past its timeout and was stopped; the message names the params key."""


def stage_order(root: str | Path, targets: list[str] | None = None) -> list[str]:
    """Return the addresses of the DVC stages of ``root`` to run, dependencies first.

    ``targets`` are names as ``dvc repro`` takes them (a stage, a foreach/matrix group such as
    ``train``, one item such as ``train@mnist-vae``, or ``path/dvc.yaml:stage``); the result is
    those stages and everything upstream of them. ``None`` means the whole DAG. Ties are broken
    by dvc.yaml order, so the order is the same on every run. ``dvc add``-ed data (no command)
    has nothing to run and is left out. Raises ``ValueError`` naming ``root`` and DVC's reason
    (no DVC repo, invalid dvc.yaml, unknown target, cycle).
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            position = {stage: i for i, stage in enumerate(repo.index.stages)}
            if targets:
                wanted = set()
                for target in targets:
                    for stage in repo.stage.collect(_in_root(target, root)):
                        wanted |= {stage} | nx.descendants(graph, stage)
                graph = graph.subgraph(wanted)
            upstream_first = nx.lexicographical_topological_sort(
                graph.reverse(copy=False), key=position.__getitem__
            )
            return [_address(s, root) for s in upstream_first if not s.is_data_source]
    except DvcException as exc:
        raise ValueError(f"{root}: DVC: {exc}") from None


def _in_root(target: str, root: str | Path) -> str:
    """``target`` with its dvc.yaml path made absolute: DVC resolves it from the current dir."""
    from dvc.utils import parse_target

    path, name = parse_target(target)
    path = os.path.join(root, path or "dvc.yaml")
    return f"{path}:{name}" if name else path


def _address(stage, root: str | Path) -> str:
    """The stage's name as ``dvc repro`` takes it in ``root``: ``name`` or ``path:name``.

    DVC's own ``stage.addressing`` is relative to the current directory, not to ``root``.
    """
    rel = os.path.relpath(stage.path, root)
    return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"


def repro(root: str, stage: str, timeout_s: float, setting: str, log=print) -> None:
    """Run ``dvc --wait-for-lock repro --single-item stage`` in ``root``, each output line to
    ``log``, holding the flows' ``repo_lock`` (one flow ``repro`` per repo at a time).

    A second run of the flow waits for the first one's stage; DVC waits for its own repo lock
    (another ``dvc repro``/``dvc exp run``) instead of failing with "Unable to acquire lock".
    Both waits count towards ``timeout_s``, after which the stage's processes are stopped.
    Raises ``StageTimedOut`` naming the stage and ``setting`` (the params key of the limit),
    or ``StageFailed`` naming the stage and quoting dvc's last lines when it exits non-zero.
    """
    late = f"DVC stage {stage!r} timed out after {timeout_s:g} s ({setting})"
    try:
        with repo_lock(root, timeout_s) as waited:
            code, tail = _run_dvc(root, stage, timeout_s - waited, log)
    except LockTimeout:
        raise StageTimedOut(f"{late} waiting for another run's stage to finish", stage) from None
    if code is None:
        raise StageTimedOut(f"{late} and was stopped", stage)
    if code:
        raise StageFailed(
            f"DVC stage {stage!r} failed (dvc repro exit code {code}):\n" + "\n".join(tail),
            stage,
        )


def _run_dvc(root: str, stage: str, timeout_s: float, log) -> tuple[int | None, list[str]]:
    """``dvc repro`` of ``stage``; return its exit code (``None``: stopped after ``timeout_s``
    seconds) and its last ``TAIL_LINES`` lines."""
    cmd = [*DVC, "--wait-for-lock", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    stopped = threading.Event()
    with subprocess.Popen(
        cmd,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own process group: the stage's command is stopped with dvc
    ) as proc:
        timer = threading.Timer(timeout_s, _stop, args=(proc, stopped))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    log(line)
                    tail.append(line)
            code = proc.wait()
        finally:
            timer.cancel()
    return (None if stopped.is_set() else code), list(tail)


def _stop(proc: subprocess.Popen, stopped: threading.Event) -> None:
    """Interrupt ``proc``'s process group (DVC then releases its lock); kill what outlives
    ``STOP_GRACE_S``."""
    stopped.set()
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(STOP_GRACE_S)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def default_remote(root: str | Path) -> str | None:
    """The name of the default DVC remote of ``root`` (``dvc remote add -d``), ``None`` if unset."""
    proc = subprocess.run(
        [*DVC, "remote", "default"], cwd=root, capture_output=True, text=True, timeout=120
    )
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def push(root: str | Path, log=print) -> None:
    """``dvc push`` in ``root`` (every output ``dvc.lock`` records, to the default remote), each
    output line to ``log``. Raises ``PushFailed`` quoting dvc's last lines when it fails."""
    proc = subprocess.run(
        [*DVC, "--wait-for-lock", "push"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=None,  # uploads of a whole run can take long; the stages had their timeouts
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines:
        log(line)
    if proc.returncode:
        raise PushFailed(
            f"dvc push in {root} failed (exit code {proc.returncode}):\n"
            + "\n".join(lines[-TAIL_LINES:])
        )


@task(task_run_name="dvc-push-{remote}", cache_policy=NO_CACHE)
def push_outputs(root: str, remote: str) -> str:
    """:func:`push` with dvc's output in the task's log; return ``remote``."""
    logger = get_run_logger()
    push(root, log=lambda line: logger.info("%s", line))
    return remote


@task(task_run_name="{stage}", cache_policy=NO_CACHE)  # DVC, not Prefect, decides what is stale
def repro_stage(root: str, stage: str, timeout_s: float, setting: str) -> str:
    """``repro`` of ``stage`` in ``root`` with dvc's output in the task's log; return ``stage``."""
    logger = get_run_logger()
    logger.info("dvc repro --single-item %s (in %s; timeout %g s)", stage, root, timeout_s)
    repro(root, stage, timeout_s, setting, log=lambda line: logger.info("%s", line))
    return stage


@flow(name="dvc-dag", on_failure=[notify_failure], on_crashed=[notify_failure])
def dvc_dag(root: str = ".", params: str = "params.yaml", targets: list[str] | None = None) -> dict:
    """Reproduce the DVC DAG of ``root`` stage by stage, then publish its results as artifacts.

    ``params`` (relative to ``root`` unless absolute) supplies the ``flows`` section: retries,
    retry delay and timeout of every stage, the headline tables, the sample-grid globs and
    sizes, and the report path.
    ``targets`` limits the run to those stages and their upstream (``None``: everything).
    Stages run one at a time, dependencies first: DVC locks the repo for each ``repro``, and
    waits for a lock held by another DVC command. A stage past its timeout
    (``flows.timeout_s``, ``flows.stage_timeout_s``) is stopped and fails like a failing stage
    (then retried: each attempt has the full timeout). The first stage that still fails after
    its retries fails the flow with its name. Then, with ``flows.push: auto`` and a default
    DVC remote, ``dvc push`` uploads the outputs (a failed push fails the flow). Returns
    ``{"stages": [...], "artifacts": [...], "pushed": remote or None}``: the stages run, in
    order, the artifact keys published and the remote pushed to.
    """
    base = Path(root).resolve()
    settings = load_section(base / params, "flows")
    stages = stage_order(base, targets)
    get_run_logger().info("%d DVC stage(s) in order: %s", len(stages), ", ".join(stages))
    run = repro_stage.with_options(
        retries=settings.retries, retry_delay_seconds=settings.retry_delay_s
    )
    for stage in stages:
        # Raises: stop at the first failure, as `dvc repro` does.
        run(str(base), stage, *stage_timeout(settings, stage))
    keys = publish_artifacts(base, settings)
    remote = default_remote(base) if settings.push == "auto" else None
    if remote is not None:
        push_outputs(str(base), remote)
    return {"stages": stages, "artifacts": keys, "pushed": remote}
