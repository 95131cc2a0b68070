"""The DVC DAG as a Prefect flow: one task per DVC stage, run by DVC itself.

DVC stays the single definition of the DAG and ``dvc.lock`` the single record of what produced
what: the stage graph comes from DVC's own index (``Repo.index.graph``, foreach/matrix stages
expanded to ``train@mnist-vae``), and each task runs ``dvc repro --single-item <stage>``, which
skips a stage whose dependencies, params and outputs are unchanged. Prefect adds what DVC lacks
for an unattended run: a schedule, retries, per-stage logs and a run history with artifacts.
"""

from __future__ import annotations

import os
import subprocess
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.flows import DVC
from pipeline.flows.artifacts import publish_artifacts
from pipeline.params.loader import load_section

# Lines of dvc's output repeated in the exception of a failed stage (all of it is in the log).
TAIL_LINES = 20


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and quotes dvc's last lines."""


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


@task(task_run_name="{stage}", cache_policy=NO_CACHE)  # DVC, not Prefect, decides what is stale
def repro_stage(root: str, stage: str) -> str:
    """Run ``dvc repro --single-item stage`` in ``root``, logging dvc's output; return ``stage``.

    Raises ``StageFailed`` naming the stage and quoting dvc's last lines when it exits non-zero.
    """
    logger = get_run_logger()
    cmd = [*DVC, "repro", "--single-item", stage]
    logger.info("dvc repro --single-item %s (in %s)", stage, root)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info("%s", line)
                tail.append(line)
        code = proc.wait()
    if code:
        raise StageFailed(
            f"DVC stage {stage!r} failed (dvc repro exit code {code}):\n" + "\n".join(tail)
        )
    return stage


@flow(name="dvc-dag")
def dvc_dag(root: str = ".", params: str = "params.yaml", targets: list[str] | None = None) -> dict:
    """Reproduce the DVC DAG of ``root`` stage by stage, then publish its results as artifacts.

    ``params`` (relative to ``root`` unless absolute) supplies the ``flows`` section: retries
    and retry delay of every stage, the sample-grid globs and the report path. ``targets``
    limits the run to those stages and their upstream (``None``: everything). Stages run one
    at a time, dependencies first: DVC locks the repo for each ``repro``. The first stage that
    still fails after its retries fails the flow with its name. Returns ``{"stages": [...],
    "artifacts": [...]}``: the stages run, in order, and the artifact keys published.
    """
    base = Path(root).resolve()
    settings = load_section(base / params, "flows")
    stages = stage_order(base, targets)
    get_run_logger().info("%d DVC stage(s) in order: %s", len(stages), ", ".join(stages))
    run = repro_stage.with_options(
        retries=settings.retries, retry_delay_seconds=settings.retry_delay_s
    )
    for stage in stages:
        run(str(base), stage)  # raises: stop at the first failure, as `dvc repro` does
    keys = publish_artifacts(base, settings.sample_grids, settings.report)
    return {"stages": stages, "artifacts": keys}
