"""Params section of the Prefect flows and their deployments (``pipeline.flows``, ``gvae serve``).

Registered in ``pipeline.params.loader.SECTIONS`` as ``flows``. The cron string is checked with
Prefect's own validator (imported only when this section is validated: Prefect takes a second
to import, and most stages never read this section) and the timezone against the IANA
database, so a typo fails at load time instead of silently scheduling nothing.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from common.frozen import Frozen

# Prefect deployment names end up in `prefect deployment run FLOW/NAME`: keep them shell-safe.
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A Dask scheduler address: [protocol://]host[:port], e.g. tcp://10.0.0.5:8786 or tls://[::1]:8786.
DASK_ADDRESS = re.compile(
    r"^(?:[a-z][a-z0-9+.-]*://)?"  # protocol: tcp, tls, ucx, ...
    r"(?:\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+)"  # host name, IPv4 or [IPv6]
    r"(?::\d{1,5})?$"  # port
)


class ClinicianExportParams(Frozen):
    """Defaults of the on-request export flow (``clinician_export``); paths relative to the repo.

    ``{model}`` is the requested model; ``{time}`` the request's UTC time (``YYYYmmddTHHMMSSZ``),
    so every request gets its own folder and a delivered export is never rebuilt.
    """

    deployment: str = "clinician"
    synthetic: str = "data/ct/synthetic/{model}/f1.0"  # the `generate` output, all patients
    slices: str = "data/slices"  # the real slices the generators were trained on (privacy gate)
    out: str = "export/{model}-{time}"
    # Wall-clock limit of one attempt of each task: building the study (gates included), and
    # one PACS delivery. A hung association then fails the attempt (and is retried) instead of
    # holding the request forever.
    build_timeout_s: float = Field(3600.0, gt=0)
    send_timeout_s: float = Field(600.0, gt=0)

    @field_validator("deployment")
    @classmethod
    def _name(cls, v: str) -> str:
        return _deployment_name(v)

    @field_validator("synthetic", "out")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(model="m", time="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"only {{model}} and {{time}} may be filled in, got {v!r} ({exc!r})"
            ) from None
        return v


class DaskParams(Frozen):
    """Where the ``cohort_dask`` flow (``pipeline.flows.cohort``) runs its per-case tasks.

    ``address`` null: a Dask LocalCluster of ``n_workers`` processes on this machine's loopback
    interface, started and stopped with the flow run. Otherwise the address of a running Dask
    scheduler (``tcp://scheduler.example:8786``, as ``dask scheduler`` prints it), whose workers
    must see the cohort and output folders at the same paths; ``n_workers`` and
    ``threads_per_worker`` then do not apply (the cluster has its own).
    """

    address: str | None = None
    n_workers: int = Field(2, ge=1)
    # One thread per worker process: a case is CPU-bound, partly in pure Python (DICOM parsing),
    # and every thread holds a whole case in memory.
    threads_per_worker: int = Field(1, ge=1)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not DASK_ADDRESS.match(v):
            raise ValueError(
                f"not a Dask scheduler address (e.g. tcp://scheduler.example:8786): {v!r}"
            )
        return v


class NotifyParams(Frozen):
    """Where a failed or crashed flow run is reported (``pipeline.flows.notify``).

    ``webhook``: an http(s) URL that receives the failure notice as a JSON POST; empty sends
    nothing. ``timeout_s`` bounds the POST, so an unreachable receiver cannot hold the run.
    """

    webhook: str = ""
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"not an http(s) URL (or empty: no notice), got {v!r}")
        return v


def _deployment_name(v: str) -> str:
    if not DEPLOYMENT_NAME.match(v):
        raise ValueError(f"deployment name must be 1-64 letters, digits, '_', '.', '-', got {v!r}")
    return v


class FlowsParams(Frozen):
    """The nightly DAG deployment's schedule and retries, and what its artifacts link to."""

    # Cron (5 fields or @daily-style), evaluated in `timezone`: "0 2 * * 1" stays 02:00 local
    # time across daylight-saving changes.
    cron: str = "0 2 * * 1"
    timezone: str = "UTC"
    # Extra attempts of a failed DVC stage, and of a PACS delivery (which resends only what the
    # PACS lacks), `retry_delay_s` apart.
    retries: int = Field(1, ge=0)
    retry_delay_s: float = Field(30.0, ge=0)
    deployment: str = "nightly"  # the scheduled dvc_dag deployment
    # The Prefect process work pool of prefect.yaml's deployments (`prefect worker start`).
    work_pool: str = "gvae"
    # Wall-clock limit of one attempt of one DVC stage (its wait for DVC's lock included): a
    # hung stage is stopped and failed instead of stalling the nightly. `stage_timeout_s`
    # overrides it per stage, keyed by stage name (`train` covers every `train@...` item) or
    # by one item (`train@mnist-vae`, which wins over its group).
    timeout_s: float = Field(43200.0, gt=0)
    stage_timeout_s: dict[str, Annotated[float, Field(gt=0)]] = {}
    # Globs (relative to the repo root) of the sample grids in the run's artifacts, and the
    # HTML report linked when it exists.
    sample_grids: tuple[str, ...] = (
        "data/models/**/samples/*.png",
        "data/ct/quality/*/grid.png",
    )
    report: str = "data/report/index.html"
    # After a successful DAG run: `auto` runs `dvc push` when the repo has a default DVC remote
    # (`dvc remote add -d`), so a finished run can be pulled instead of recomputed; `never` not.
    push: Literal["auto", "never"] = "auto"
    # The newest grid of each folder is embedded in the artifact, downscaled to at most
    # `grid_kb`, until `grids_total_kb` are used (0: links only); the others are links.
    grid_kb: float = Field(200.0, gt=0)
    grids_total_kb: float = Field(2000.0, ge=0)
    # Markdown tables shown inline in the run's `headline-tables` artifact, {title: path
    # relative to the repo root}; one not produced yet is named as such.
    tables: dict[str, str] = {
        "Segmentation: test Dice and paired differences": "data/ct/segment/table.md",
        "CT synthesis: quality": "data/ct/quality_report/table.md",
    }
    export: ClinicianExportParams = ClinicianExportParams()
    notify: NotifyParams = NotifyParams()  # the failure notice of every flow
    dask: DaskParams = DaskParams()  # the cohort_dask flow: ingest + slicing mapped over cases

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from prefect.schedules import validate_cron_string

        return validate_cron_string(v)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not an IANA timezone (e.g. UTC, Europe/Berlin), got {v!r}") from None
        return v

    @field_validator("deployment", "work_pool")
    @classmethod
    def _name(cls, v: str) -> str:
        return _deployment_name(v)


def stage_timeout(settings: FlowsParams, stage: str) -> tuple[float, str]:
    """Return ``(seconds, key)``: the timeout of DVC stage ``stage`` and the params key it
    comes from (``flows.stage_timeout_s.<item or group>``, else ``flows.timeout_s``).

    ``stage`` is an address as ``stage_order`` returns it (``train@mnist-vae``,
    ``sub/dvc.yaml:name``); only its name part is matched against ``stage_timeout_s``.
    """
    name = stage.rpartition(":")[2]
    for key in (name, name.partition("@")[0]):
        if key in settings.stage_timeout_s:
            return settings.stage_timeout_s[key], f"flows.stage_timeout_s.{key}"
    return settings.timeout_s, "flows.timeout_s"
