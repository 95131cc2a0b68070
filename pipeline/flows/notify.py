"""The failure notice of the flows: a JSON POST to ``flows.notify.webhook`` when a run fails.

``notify_failure`` is the flows' ``on_failure``/``on_crashed`` hook. It reads the webhook from
the params file the failed run was given (its ``root`` and ``params`` parameters), so every
deployment notifies where its own params say; an empty webhook sends nothing. The body is
``failure_notice``'s dict; chat tools that want another shape can sit behind a small relay.
A notice that cannot be delivered is logged, never raised: the run has already failed, and
its own error is the one to keep.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.params.loader import load_section

# The error text sent is cut to this many characters (dvc's tail is in the run's log anyway).
MAX_ERROR_CHARS = 4000


def failure_notice(flow: str, run: str, run_id: str, state: str, error: Any) -> dict[str, Any]:
    """The JSON body of a failure notice: ``{"flow", "flow_run", "flow_run_id", "state",
    "stage", "error"}``.

    ``error`` is the run's exception (a ``StageFailed`` names its DVC stage in ``stage``;
    anything else gives ``stage: null``) or its state message.
    """
    return {
        "flow": flow,
        "flow_run": run,
        "flow_run_id": run_id,
        "state": state,
        "stage": getattr(error, "stage", None),
        "error": str(error)[:MAX_ERROR_CHARS],
    }


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> int:
    """POST ``body`` as JSON to ``url``; return the HTTP status (an error status raises)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status


def notify_failure(flow, flow_run, state) -> None:
    """Prefect hook: send ``failure_notice`` of a failed or crashed run to its webhook."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run, flow)  # the failed run's own log
    try:
        params = flow_run.parameters
        settings = load_section(
            Path(params.get("root", ".")).resolve() / params.get("params", "params.yaml"), "flows"
        ).notify
        if not settings.webhook:
            return
        error = _error(state)
        body = failure_notice(flow.name, flow_run.name, str(flow_run.id), state.name, error)
        post_json(settings.webhook, body, settings.timeout_s)
        logger.info("failure notice of %s sent to %s", flow_run.name, settings.webhook)
    except Exception as exc:  # never mask the run's own failure
        logger.warning("failure notice of %s not sent: %s", flow_run.name, exc)


def _error(state) -> Any:
    """The exception a failed state holds, or its message when it holds none."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception:
        result = None
    return result if isinstance(result, BaseException) else (state.message or state.name)
