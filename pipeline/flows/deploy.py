"""Deployments of the flows: the DAG on the ``flows`` schedule, the clinician export on request.

One definition, two ways to run it. ``specs`` describes both deployments from the ``flows``
params (name, entrypoint, schedule, concurrency, tags); from it

- ``register`` applies them to the Prefect API (``PREFECT_API_URL``) and returns at once, and
  ``serve`` registers them and runs their flow runs in this process until stopped
  (``gvae serve``, the one-machine shortcut). Both carry the absolute repo root and params
  file, so a run does not depend on the directory the runner was started in;
- ``prefect_yaml`` writes them as a ``prefect.yaml`` for ``prefect deploy --all``: the
  deployments then live on a process work pool (``flows.work_pool``) and a
  ``prefect worker start`` service runs them, in the repo named by ``$GVAE_ROOT`` on the
  worker's machine (``gvae serve --prefect-yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from pipeline.params.flows import FlowsParams
from pipeline.params.loader import load_section

# Module paths, not file paths relative to the current directory: a runner or worker imports
# the installed package wherever it was started.
DAG_ENTRYPOINT = "pipeline.flows.dag.dvc_dag"
EXPORT_ENTRYPOINT = "pipeline.flows.export.clinician_export"
TAGS = ["gvae"]
# The worker's environment variable naming the repository its flow runs work in.
ROOT_ENV = "GVAE_ROOT"


def specs(settings: FlowsParams) -> list[dict[str, Any]]:
    """The two deployments as prefect.yaml entries (no work pool, no parameters).

    ``<flows.deployment>`` runs the DAG on ``flows.cron`` in ``flows.timezone`` with a
    concurrency limit of 1 whose collision strategy is ENQUEUE: a second trigger waits
    (AwaitingConcurrencySlot) and starts when the first ends, rather than being dropped.
    ``<flows.export.deployment>`` runs the clinician export on request (no schedule).
    """
    return [
        {
            "name": settings.deployment,
            "entrypoint": DAG_ENTRYPOINT,
            "description": (
                f"dvc repro, stage by stage, at '{settings.cron}' ({settings.timezone})"
            ),
            "tags": list(TAGS),
            "schedules": [{"cron": settings.cron, "timezone": settings.timezone}],
            "concurrency_limit": {"limit": 1, "collision_strategy": "ENQUEUE"},
        },
        {
            "name": settings.export.deployment,
            "entrypoint": EXPORT_ENTRYPOINT,
            "description": "N synthetic slices of a model as a DICOM study, to a folder or PACS",
            "tags": list(TAGS),
        },
    ]


def deployments(root: str | Path, params: str | Path) -> list:
    """The ``RunnerDeployment``s of ``specs``: ``dvc-dag/<flows.deployment>`` and
    ``clinician-export/<flows.export.deployment>``, with ``root`` and ``params`` (absolute)
    as their parameters.

    ``params`` is read now (a bad schedule fails here, not at 2 a.m.) and passed to the runs.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from pipeline.flows.dag import dvc_dag
    from pipeline.flows.export import clinician_export

    root, params = Path(root).resolve(), Path(params).resolve()
    flows = {DAG_ENTRYPOINT: dvc_dag, EXPORT_ENTRYPOINT: clinician_export}
    built = []
    for spec in specs(load_section(params, "flows")):
        options: dict[str, Any] = {}
        if "schedules" in spec:
            options["schedules"] = [
                Cron(s["cron"], timezone=s["timezone"]) for s in spec["schedules"]
            ]
        if "concurrency_limit" in spec:
            limit = spec["concurrency_limit"]
            options["concurrency_limit"] = ConcurrencyLimitConfig(
                limit=limit["limit"],
                collision_strategy=ConcurrencyLimitStrategy(limit["collision_strategy"]),
            )
        built.append(
            flows[spec["entrypoint"]].to_deployment(
                name=spec["name"],
                description=spec["description"],
                tags=spec["tags"],
                parameters={"root": str(root), "params": str(params)},
                entrypoint_type=EntrypointType.MODULE_PATH,
                **options,
            )
        )
    return built


def prefect_yaml(settings: FlowsParams, params: str = "params.yaml") -> dict[str, Any]:
    """The ``prefect.yaml`` of ``specs`` for ``prefect deploy --all``.

    Every deployment goes to the process work pool ``flows.work_pool``. The pull step makes
    the worker's flow-run process change to ``$GVAE_ROOT`` (read where the run starts), and
    the runs get ``root: "."`` and ``params`` relative to it, so the file names no machine's
    paths.
    """
    return {
        "name": "gvae",
        "build": None,
        "push": None,
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $" + ROOT_ENV + " }}"
                }
            }
        ],
        "deployments": [
            {
                **spec,
                "parameters": {"root": ".", "params": params},
                "work_pool": {
                    "name": settings.work_pool,
                    "work_queue_name": None,
                    "job_variables": {},
                },
            }
            for spec in specs(settings)
        ],
    }


PREFECT_YAML_HEADER = """\
# Prefect deployments of this repository on a process work pool (docs/operations.md).
# Generated from params.yaml's `flows` section by `gvae serve --prefect-yaml prefect.yaml`:
# change params.yaml and regenerate (a test checks this file matches it).
#   prefect work-pool create {pool} --type process
#   prefect deploy --all
#   GVAE_ROOT=/path/to/repo prefect worker start --pool {pool}
"""


def write_prefect_yaml(path: str | Path, root: str | Path, params: str | Path) -> Path:
    """Write ``prefect_yaml`` of the params file ``params`` of the repo ``root`` to ``path``
    (``params`` named relative to ``root`` when it is inside it); return ``path``."""
    import yaml

    settings = load_section(params, "flows")
    root, params = Path(root).resolve(), Path(params).resolve()
    name = params.relative_to(root).as_posix() if params.is_relative_to(root) else str(params)
    text = yaml.safe_dump(prefect_yaml(settings, name), sort_keys=False, width=100)
    path = Path(path)
    path.write_text(PREFECT_YAML_HEADER.format(pool=settings.work_pool) + text)
    return path


def register(root: str | Path, params: str | Path) -> dict[str, UUID]:
    """Apply the deployments to the Prefect API without running anything.

    Returns ``{"flow-name/deployment-name": deployment id}``. Applying again updates them.
    """
    return {f"{d.flow_name}/{d.name}": d.apply() for d in deployments(root, params)}


def serve(root: str | Path, params: str | Path) -> None:
    """Register the deployments and execute their runs here until interrupted (blocks)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(root, params))
