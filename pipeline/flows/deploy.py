"""Deployments of the flows: the DAG on the ``flows`` schedule, the clinician export on request.

``register`` applies them to the Prefect API (``PREFECT_API_URL``) and returns at once; the
API's scheduler then creates the nightly runs. ``serve`` registers them and runs their flow
runs in this process until stopped (``gvae serve``). Both deployments carry the absolute repo
root and params file, so a run does not depend on the directory the runner was started in.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from pipeline.params.loader import load_section


def deployments(root: str | Path, params: str | Path) -> list:
    """The two ``RunnerDeployment``s: ``dvc-dag/<flows.deployment>`` with the cron schedule
    in ``flows.timezone`` and a concurrency limit of 1 (a second run waits), and
    ``clinician-export/<flows.export.deployment>`` (no schedule).

    ``params`` is read now (a bad schedule fails here, not at 2 a.m.) and passed to the runs.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from pipeline.flows.dag import dvc_dag
    from pipeline.flows.export import clinician_export

    root, params = Path(root).resolve(), Path(params).resolve()
    settings = load_section(params, "flows")
    common = {
        "parameters": {"root": str(root), "params": str(params)},
        "tags": ["gvae"],
        # A module path, not a file path relative to the current directory: the runner
        # imports the installed package wherever it was started.
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }
    nightly = dvc_dag.to_deployment(
        name=settings.deployment,
        schedule=Cron(settings.cron, timezone=settings.timezone),
        # One DAG run at a time; a second trigger is enqueued (AwaitingConcurrencySlot) and
        # starts when the first ends, rather than being dropped.
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        description=f"dvc repro, stage by stage, at '{settings.cron}' ({settings.timezone})",
        **common,
    )
    on_request = clinician_export.to_deployment(
        name=settings.export.deployment,
        description="N synthetic slices of a model as a DICOM study, to a folder and/or PACS",
        **common,
    )
    return [nightly, on_request]


def register(root: str | Path, params: str | Path) -> dict[str, UUID]:
    """Apply the deployments to the Prefect API without running anything.

    Returns ``{"flow-name/deployment-name": deployment id}``. Applying again updates them.
    """
    return {f"{d.flow_name}/{d.name}": d.apply() for d in deployments(root, params)}


def serve(root: str | Path, params: str | Path) -> None:
    """Register the deployments and execute their runs here until interrupted (blocks)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(root, params))
