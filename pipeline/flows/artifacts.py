"""Prefect artifacts of a DAG run: the metrics DVC tracks, the headline tables, the sample
grids, the HTML report.

The metrics come from ``dvc metrics show --json`` (DVC knows which files are metrics; nothing
here lists them again). The headline tables (``flows.tables``: the segmentation Dice table with
its paired differences, the CT quality table) are the stages' own ``table.md``, shown inline.
The newest sample grid of each folder is embedded in the markdown as a ``data:image/png`` URI,
downscaled to at most ``flows.grid_kb`` (and ``flows.grids_total_kb`` in all, the rest linked),
so the run's page in the Prefect UI shows them without access to the repo's disk. Functions
without Prefect turn DVC's output and the files into table rows and markdown;
``publish_artifacts`` is the only part that talks to Prefect.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.flows import DVC
from pipeline.params.flows import FlowsParams

GRIDS_KEY = "sample-grids"
TABLES_KEY = "headline-tables"
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


def tables_markdown(root: Path, tables: dict[str, str]) -> str:
    """Markdown with each of ``tables`` (``{title: markdown file relative to root}``) inline
    under its title; a file that does not exist yet is named as not produced."""
    lines = ["# Headline tables"]
    for title, rel in tables.items():
        path = root / rel
        lines += ["", f"## {title}", ""]
        if path.is_file():
            lines += [path.read_text().strip(), "", f"(`{rel}`)"]
        else:
            lines.append(f"Not produced yet (no `{rel}`).")
    return "\n".join(lines)


def _natural(path: Path) -> list:
    """Sort key of a path with its numbers compared as numbers: step-10 after step-2."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def newest_per_folder(grids: list[Path]) -> list[Path]:
    """The last grid of each folder in natural order (a trainer's highest step), sorted."""
    newest: dict[Path, Path] = {}
    for grid in grids:
        if grid.parent not in newest or _natural(grid) > _natural(newest[grid.parent]):
            newest[grid.parent] = grid
    return sorted(newest.values())


def png_at_most(path: Path, max_bytes: int) -> tuple[bytes, tuple[int, int]]:
    """``(PNG bytes, (width, height))`` of the image at ``path`` in at most ``max_bytes``.

    A PNG that fits is returned as it is; anything else is re-encoded as PNG and shrunk
    (aspect ratio kept, Lanczos) until it fits. ``ValueError`` names a file PIL cannot read.
    """
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, img = im.format, im.copy()
    except (OSError, SyntaxError) as exc:  # PIL reports some broken PNG chunks as SyntaxError
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    if fmt == "PNG" and len(data) <= max_bytes:
        return data, img.size
    scale = 1.0
    while True:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes or size == (1, 1):
            return buf.getvalue(), size
        # PNG size grows about with the pixel count: shrink both sides by the square root.
        scale *= min(0.9, max(0.5, (max_bytes / buf.tell()) ** 0.5))


def grids_markdown(root: Path, grids: list[Path], grid_bytes: int = 0, total_bytes: int = 0) -> str:
    """Markdown of ``grids`` grouped by folder (relative names): every grid as a ``file://``
    link, and the newest of each folder embedded as a PNG data URI of at most ``grid_bytes``
    while the embedded images stay within ``total_bytes`` (``0``: links only)."""
    from pipeline.report.render import data_uri

    lines = ["# Sample grids", ""]
    if not grids:
        return "\n".join([*lines, "No sample grids found yet."])
    shown, budget = set(newest_per_folder(grids)), total_bytes
    folder = None
    for grid in grids:
        rel = grid.relative_to(root)
        if rel.parent != folder:
            folder = rel.parent
            lines += ["", f"## {folder}", ""]
        lines.append(f"- [{rel.name}]({grid.resolve().as_uri()})")
        if grid not in shown or not (grid_bytes and total_bytes):
            continue
        if budget <= 0:
            lines.append("  (not embedded: flows.grids_total_kb used up)")
            continue
        try:
            png, (width, height) = png_at_most(grid, min(grid_bytes, budget))
        except ValueError as exc:  # a broken grid is named, not fatal: the stages all ran
            lines.append(f"  ({exc})")
            continue
        if len(png) > budget:  # not even 1 px fits what is left
            lines.append("  (not embedded: flows.grids_total_kb used up)")
            continue
        budget -= len(png)
        lines += ["", f"![{rel} ({width}x{height})]({data_uri(png, 'image/png')})", ""]
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
def publish_artifacts(root: Path, settings: FlowsParams) -> list[str]:
    """Create the run's artifacts from the ``flows`` params ``settings``; return their keys.

    One table per metrics file (``metrics-<path>``), the headline tables inline
    (``headline-tables``), the sample grids with the newest of each folder embedded
    (``sample-grids``), and a link to the HTML report (``html-report``) when it exists.
    """
    logger = get_run_logger()
    keys = []
    for path, rows in metrics_tables(dvc_metrics(root)).items():
        key = artifact_key("metrics", path)
        create_table_artifact(rows, key=key, description=f"`dvc metrics show`: {path}")
        keys.append(key)
    if settings.tables:
        create_markdown_artifact(
            tables_markdown(root, settings.tables),
            key=TABLES_KEY,
            description=", ".join(settings.tables),
        )
        keys.append(TABLES_KEY)
    grids = find_grids(root, settings.sample_grids)
    markdown = grids_markdown(
        root, grids, int(settings.grid_kb * 1024), int(settings.grids_total_kb * 1024)
    )
    create_markdown_artifact(markdown, key=GRIDS_KEY, description=f"{len(grids)} sample grid(s)")
    keys.append(GRIDS_KEY)
    page = root / settings.report
    if page.is_file():
        create_link_artifact(
            page.resolve().as_uri(),
            link_text=settings.report,
            key=REPORT_KEY,
            description="HTML report",
        )
        keys.append(REPORT_KEY)
    else:
        logger.info("no HTML report at %s yet; not linked", page)
    return keys
