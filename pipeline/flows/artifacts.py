"""Prefect artifacts of a DAG run: the metrics DVC tracks, the sample grids, the HTML report.

The metrics come from ``dvc metrics show --json`` (DVC knows which files are metrics; nothing
here lists them again). Pure functions turn that output and the file lists into table rows and
markdown; ``publish_artifacts`` is the only part that talks to Prefect.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.flows import DVC

GRIDS_KEY = "sample-grids"
REPORT_KEY = "html-report"


def artifact_key(prefix: str, path: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``path``: ``prefix-...``."""
    return f"{prefix}-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-')}"


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(dotted.key, value)]`` of nested dicts; lists and other leaves are kept as values."""
    if not isinstance(data, dict):
        return [(prefix or "value", data)]
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        rows.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return rows


def metrics_tables(shown: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{metrics file: [{"metric", "value"}]}`` of the workspace in ``dvc metrics show --json``.

    DVC keys the workspace as ``""``. A file DVC could not read (e.g. its stage has not run yet)
    gets one row with DVC's error instead of its metrics.
    """
    workspace = shown.get("") or {}
    tables: dict[str, list[dict[str, Any]]] = {}
    for path, entry in sorted((workspace.get("data") or {}).items()):
        if "data" in entry:
            rows = [{"metric": k, "value": _cell(v)} for k, v in flatten(entry["data"])]
        else:
            rows = [{"metric": "error", "value": json.dumps(entry.get("error"))}]
        tables[path] = rows
    return tables


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def find_grids(root: Path, patterns: tuple[str, ...] | list[str]) -> list[Path]:
    """Files under ``root`` matching any glob of ``patterns`` (``**`` recurses), sorted, unique."""
    found = {p for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    return sorted(found)


def grids_markdown(root: Path, grids: list[Path]) -> str:
    """Markdown listing ``grids`` as ``file://`` links grouped by folder (relative names)."""
    lines = ["# Sample grids", ""]
    if not grids:
        return "\n".join([*lines, "No sample grids found yet."])
    folder = None
    for grid in grids:
        rel = grid.relative_to(root)
        if rel.parent != folder:
            folder = rel.parent
            lines += ["", f"## {folder}", ""]
        lines.append(f"- [{rel.name}]({grid.resolve().as_uri()})")
    return "\n".join(lines)


def dvc_metrics(root: Path) -> dict[str, Any]:
    """Parsed ``dvc metrics show --json`` of ``root``; ``RuntimeError`` quoting DVC if it fails."""
    res = subprocess.run(
        [*DVC, "metrics", "show", "--json"], cwd=root, capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(f"{root}: dvc metrics show failed: {res.stderr.strip()}")
    return json.loads(res.stdout or "{}")


@task(name="artifacts", task_run_name="artifacts", cache_policy=NO_CACHE)
def publish_artifacts(root: Path, grid_patterns: tuple[str, ...], report: str) -> list[str]:
    """Create the run's artifacts; return their keys.

    One table per metrics file (``metrics-<path>``), one markdown list of the sample grids
    (``sample-grids``), and a link to the HTML report (``html-report``) when it exists.
    """
    logger = get_run_logger()
    keys = []
    for path, rows in metrics_tables(dvc_metrics(root)).items():
        key = artifact_key("metrics", path)
        create_table_artifact(rows, key=key, description=f"`dvc metrics show`: {path}")
        keys.append(key)
    grids = find_grids(root, grid_patterns)
    create_markdown_artifact(
        grids_markdown(root, grids), key=GRIDS_KEY, description=f"{len(grids)} sample grid(s)"
    )
    keys.append(GRIDS_KEY)
    page = root / report
    if page.is_file():
        create_link_artifact(
            page.resolve().as_uri(), link_text=report, key=REPORT_KEY, description="HTML report"
        )
        keys.append(REPORT_KEY)
    else:
        logger.info("no HTML report at %s yet; not linked", page)
    return keys
