"""Ingest and slicing of a cohort with one Prefect task per case, run on Dask (``prefect-dask``).

``gvae ingest`` and ``gvae slices`` spread their cases over the processes of one machine. This
flow maps the same per-case code over a Dask cluster and writes the same outputs, file for
file:

1. ingest: ``ingest.case_jobs``'s worker, one ``ingest {case}`` task per case folder, then the
   manifest written by ``ingest.write_manifest``, as the stage writes it;
2. slices: the slices stage's own ``run`` with a ``map_cases`` that runs every volume's
   slicing (``slices.slice_volume``) as a ``slice {case}`` task. The split, the ROI offset of
   the training cases and the shard writing stay in the stage, in the flow's process: the
   shards are written in split order by one writer, which also holds every case's slices until
   they are written.

The cluster comes from params ``flows.dask``: a LocalCluster of ``n_workers`` processes on
loopback by default, started and stopped with the run, or the running scheduler at
``address``. Workers read the cohort and write the volumes at the paths the flow passes them
(absolute, under ``root``), so on a real cluster they must see the same file system.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from pipeline.flows.notify import notify_failure
from pipeline.params.flows import DaskParams
from pipeline.params.loader import load_section

# A LocalCluster's scheduler and workers are this machine's processes: listen on loopback only.
LOOPBACK = "127.0.0.1"


def task_runner(settings: DaskParams):
    """Return the ``DaskTaskRunner`` that ``settings`` (params ``flows.dask``) describe.

    With ``address``: a client of that running scheduler. Without: a LocalCluster of
    ``n_workers`` worker processes, ``threads_per_worker`` threads each, on loopback and
    without the dashboard, created when the flow starts and closed when it ends.
    """
    from prefect_dask import DaskTaskRunner

    if settings.address is not None:
        return DaskTaskRunner(address=settings.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": settings.n_workers,
            "threads_per_worker": settings.threads_per_worker,
            "processes": True,
            "host": LOOPBACK,
            "dashboard_address": None,  # a web server per run that nobody reads, on a fixed port
        },
    )


# The stages' files are the results: Prefect caches nothing and persists nothing.
@task(task_run_name="ingest {case_id}", cache_policy=NO_CACHE)
def ingest_task(case_id: str, worker: Callable[[Any], dict], job: tuple) -> dict:
    """Return ``worker(job)``: the manifest row of ``case_id`` (bad input is an "error" row)."""
    return worker(job)


@task(task_run_name="slice {case_id}", cache_policy=NO_CACHE)
def slice_task(case_id: str, fn: Callable[[str], Any]) -> Any:
    """Return ``fn(case_id)``: one volume's slices, or the message that skips the case."""
    return fn(case_id)


def map_as_tasks(fn: Callable[[str], Any], case_ids: list[str]) -> list[Any]:
    """The slices stage's ``map_cases``: ``fn`` of every case as a ``slice_task`` on the flow's
    task runner; returns the results in ``case_ids`` order (a crashed task raises here)."""
    return slice_task.map(case_ids, unmapped(fn)).result()


@flow(name="cohort-dask-cases")
def cohort_cases(params: str, images: str, labels: str, volumes: str, slices: str) -> dict:
    """Ingest ``images`` + ``labels`` into ``volumes`` and slice them into ``slices``, each
    case a task on this run's task runner (``cohort_dask`` sets it); ``params`` is the params
    file (sections ``ingest`` and ``slices``; ``ingest.workers`` and ``slices.input`` are not
    used: Dask runs the cases, and the input of slicing is ``volumes``).

    Returns ``{"volumes", "cases", "failed", "slices"}``: the failed case ids and the slices
    stage's summary. Raises ``StageError`` naming the failed cases, before slicing, when
    ``ingest.strict`` is set and a case failed (the manifest is written first, as by
    ``gvae ingest --strict``).
    """
    from pipeline.cohort import write_slices as slices_stage
    from pipeline.cohort.ingest import case_jobs, write_manifest
    from pipeline.errors import StageError

    logger = get_run_logger()
    ingest = load_section(params, "ingest")
    worker, jobs = case_jobs(ingest, images, labels, volumes)
    futures = ingest_task.map([cid for cid, _ in jobs], unmapped(worker), [j for _, j in jobs])
    rows = write_manifest(futures.result(), Path(volumes))
    for row in rows:
        if row["status"] != "ok":
            logger.warning("ingest: %s: error: %s", row["case_id"], row["error"])
        elif row["warning"]:
            logger.warning("ingest: %s: warning: %s", row["case_id"], row["warning"])
    failed = [r["case_id"] for r in rows if r["status"] != "ok"]
    done = len(rows) - len(failed)
    logger.info("ingest: %d of %d case(s) written to %s", done, len(rows), volumes)
    if failed and ingest.strict:
        raise StageError(f"{params}: ingest.strict: failed case(s): {', '.join(failed)}")
    summary = slices_stage.run(load_section(params, "slices"), volumes, slices, map_as_tasks)
    logger.info("slices: %s case(s) -> %s", summary["cases"], slices)
    return {"volumes": volumes, "cases": len(rows), "failed": failed, "slices": summary}


@flow(name="cohort-dask", on_failure=[notify_failure], on_crashed=[notify_failure])
def cohort_dask(
    root: str = ".",
    params: str = "params.yaml",
    images: str | None = None,
    labels: str | None = None,
    volumes: str = "data/volumes",
    slices: str = "data/slices",
) -> dict:
    """What ``gvae ingest`` then ``gvae slices`` write, with every case a task on Dask.

    ``params`` (relative to ``root`` unless absolute) supplies ``ingest``, ``slices`` and
    ``flows.dask`` (the cluster, ``task_runner``). ``images`` and ``labels`` default to
    ``ingest.images`` / ``ingest.labels``; these and ``volumes`` and ``slices`` (the output
    folders, the DVC stages' by default) are relative to ``root``. Raises ``ValueError``
    naming ``params`` when ``slices.source`` is not "volumes" (2D pairs have no ingest).
    Returns ``cohort_cases``'s summary.
    """
    base = Path(root).resolve()
    params_path = base / params
    ingest = load_section(params_path, "ingest")
    if load_section(params_path, "slices").source != "volumes":
        raise ValueError(f"{params_path}: slices.source must be 'volumes' for this flow")
    settings = load_section(params_path, "flows").dask
    where = settings.address or f"a LocalCluster of {settings.n_workers} worker(s)"
    get_run_logger().info("cases run as Dask tasks on %s", where)
    run = cohort_cases.with_options(task_runner=task_runner(settings))
    return run(
        str(params_path),
        str(base / (images or ingest.images)),
        str(base / (labels or ingest.labels)),
        str(base / volumes),
        str(base / slices),
    )
