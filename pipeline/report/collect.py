"""Read the stage outputs of one run into the report's context (plain dicts, nothing written).

A section whose inputs do not exist is kept, marked ``produced: False`` with the reason, so
the report says what this run did not make (Fashion-MNIST outside ``mnist.datasets``, a stage
not run yet) instead of failing or silently leaving it out. An input that exists but cannot
be read is an error naming the file: a report must never show a half-read result.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.augment.segment.reading import answer, rows_from_metrics
from pipeline.params.sanity import SANITY_DATASETS
from pipeline.report.render import csv_rows, data_uri, markdown_html
from pipeline.report.summary import profile_text
from pipeline.sanity.seeds import seed_dirs

NOT_PRODUCED = "not produced by this run"
DATASET_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
# Flagged near-copies listed per set; the full per-sample list stays in memorization.json.
MAX_FLAGGED = 20
_STEP = re.compile(r"^step-(\d+)\.png$")


def read_json(path: Path) -> Any:
    """Return the parsed JSON of ``path``; ``ValueError`` names the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def image(path: Path, caption: str) -> dict | None:
    """Return ``{caption, src, source, width, height}`` for the image at ``path``, or ``None``.

    ``src`` is the file itself as a data URI. The image is decoded once here (PIL ``verify``),
    so a truncated or corrupt file is a ``ValueError`` naming it rather than a broken picture.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height, fmt = im.width, im.height, im.format
            im.verify()
    except (OSError, SyntaxError) as exc:  # PIL reports some broken PNG chunks as SyntaxError
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    mime = Image.MIME.get(fmt or "", "application/octet-stream")
    return {
        "caption": caption,
        "src": data_uri(data, mime),
        "source": str(path),
        "width": width,
        "height": height,
    }


def _download(path: Path) -> dict | None:
    mime = {".csv": "text/csv", ".json": "application/json"}.get(path.suffix, "text/plain")
    if not path.is_file():
        return None
    return {"name": path.name, "href": data_uri(path.read_bytes(), mime), "source": str(path)}


def table(md_path: Path, csv_path: Path, extra: tuple[Path, ...] = ()) -> dict | None:
    """Return one table: ``{source, html, header, rows, downloads}``, or ``None`` if absent.

    The stage's own markdown (formatted numbers, CIs, caption) is shown when it exists, else the
    CSV as a plain grid; the CSV and ``extra`` files ride along as downloads.
    """
    if not md_path.is_file() and not csv_path.is_file():
        return None
    downloads = [d for d in (_download(p) for p in (csv_path, *extra)) if d]
    if md_path.is_file():
        return {
            "source": str(md_path),
            "html": markdown_html(md_path.read_text()),
            "header": [],
            "rows": [],
            "downloads": downloads,
        }
    header, rows = csv_rows(csv_path.read_text())
    return {
        "source": str(csv_path),
        "html": None,
        "header": header,
        "rows": rows,
        "downloads": downloads,
    }


def latest_grid(folder: Path) -> Path | None:
    """Return the ``step-NNNNNN.png`` with the highest step in ``folder`` (trainer grids)."""
    steps = [(int(m.group(1)), p) for p in folder.glob("step-*.png") if (m := _STEP.match(p.name))]
    return max(steps)[1] if steps else None


def sanity_section(
    dataset: str, in_run: bool, tables_dir: Path, runs_dir: Path, models: list[str]
) -> dict:
    """Return the section of one sanity dataset: its table, side-by-side figure, model grids."""
    label = DATASET_LABELS.get(dataset, dataset)
    section = {
        "id": f"sanity-{dataset}",
        "title": f"{label}: generative models",
        "produced": False,
        "reason": "",
        "table": None,
        "figure": None,
        "stability": None,
        "grids": [],
    }
    if not in_run:
        section["reason"] = f"{NOT_PRODUCED} ({dataset} is not in mnist.datasets)"
        return section
    folder = tables_dir / dataset
    section["table"] = table(folder / "table.md", folder / "table.csv")
    section["figure"] = image(folder / "samples.png", f"{label}: samples of every model")
    section["stability"] = image(
        folder / "stability.png", f"{label}: adversarial loss curves and class entropy in training"
    )
    for model in models:
        # The first seed's grids (gvae train writes <model>/s<seed>/samples/step-*.png).
        seeds = seed_dirs(runs_dir / dataset / model)
        grid = latest_grid(seeds[0][1] / "samples") if seeds else None
        shown = None
        if grid is not None:
            step = int(_STEP.match(grid.name).group(1))
            shown = image(grid, f"{model}: training samples at step {step} (seed {seeds[0][0]})")
        section["grids"].append({"name": model, "image": shown})
    found = [
        section["table"],
        section["figure"],
        section["stability"],
        *(g["image"] for g in section["grids"]),
    ]
    section["produced"] = any(found)
    if not section["produced"]:
        section["reason"] = f"{NOT_PRODUCED} (nothing in {folder} or {runs_dir / dataset})"
    return section


def memorization(path: Path, name: str) -> dict | None:
    """Return the summary of one ``memorization.json`` (``gvae ct-quality``), or ``None``.

    The summary keeps the threshold, quantile and share of near-copies and lists the flagged
    samples closest first (at most ``MAX_FLAGGED``); the per-sample list stays in the file.
    """
    if not path.is_file():
        return None
    record = read_json(path)
    try:
        samples = record["samples"]
        flagged = sorted((s for s in samples if s["near_copy"]), key=lambda s: s["distance"])
        summary = {k: record[k] for k in ("set", "quantile", "threshold", "share", "n_flagged")}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a memorization record (missing {exc})") from None
    return {
        "name": name,
        "source": str(path),
        "n": len(samples),
        **summary,
        "flagged": flagged[:MAX_FLAGGED],
        "more": max(0, len(flagged) - MAX_FLAGGED),
    }


def ct_quality_section(quality_dir: Path, report_dir: Path, ct_models: list[str]) -> dict:
    """Return the CT section: quality table, grid per generator and of the real floor."""
    sets = [*ct_models, "real"]
    grids, memo = [], []
    for name in sets:
        # ct-quality's grid: real test slices on the left, the compared set on the right.
        right = "real train (the floor)" if name == "real" else f"{name} synthetic"
        caption = f"{name}: real test (left) vs {right} (right), pancreas in red"
        grids.append({"name": name, "image": image(quality_dir / name / "grid.png", caption)})
        memo.append(
            {"name": name, "summary": memorization(quality_dir / name / "memorization.json", name)}
        )
    quality = table(report_dir / "table.md", report_dir / "table.csv")
    produced = bool(quality) or any(g["image"] for g in grids)
    memo_produced = any(m["summary"] for m in memo)
    return {
        "quality": {
            "id": "ct-quality",
            "title": "CT synthesis: quality",
            "produced": produced,
            "table": quality,
            "grids": grids,
            "reason": ""
            if produced
            else f"{NOT_PRODUCED} (nothing in {quality_dir} or {report_dir})",
        },
        "memorization": {
            "id": "memorization",
            "title": "CT synthesis: memorization",
            "produced": memo_produced,
            "sets": memo,
            # gvae ct-quality --fractions: each model's near-copy share per training fraction
            "by_fraction": table(report_dir / "near_copies.md", report_dir / "near_copies.csv"),
            "reason": ""
            if memo_produced
            else f"{NOT_PRODUCED} (no */memorization.json in {quality_dir})",
        },
    }


def segment_section(segment_dir: Path, usefulness_dir: Path | None = None) -> dict:
    """Return the segmentation section: Dice table (with CIs), the Dice-vs-size plot, the mask
    faithfulness table and the quality-vs-usefulness correlations (``gvae usefulness``)."""
    seg = table(
        segment_dir / "table.md", segment_dir / "results.csv", (segment_dir / "metrics.json",)
    )
    plot = image(segment_dir / "dice_vs_size.png", "test Dice against training-set size")
    faith = table(segment_dir / "faithfulness.md", segment_dir / "faithfulness.csv")
    useful = None
    if usefulness_dir is not None:
        useful = table(usefulness_dir / "table.md", usefulness_dir / "table.csv",
                       (usefulness_dir / "points.csv",))  # fmt: skip
    produced = bool(seg or plot)
    return {
        "id": "segmentation",
        "title": "Segmentation with synthetic augmentation",
        "produced": produced,
        "table": seg,
        "faithfulness": faith,
        "usefulness": useful,
        "plots": [plot] if plot else [],
        "reason": "" if produced else f"{NOT_PRODUCED} (nothing in {segment_dir})",
    }


def summary_section(segment_dir: Path, params: dict[str, Any]) -> dict:
    """Return the report's opening: the profile paragraph, the forest plot and the answer.

    ``params`` is the run shape of the provenance (profile, image size, budgets, CI level).
    Without segmentation output the opening says so instead of an answer.
    """
    metrics = segment_dir / "metrics.json"
    text = None
    if metrics.is_file():
        record = read_json(metrics)
        try:
            text = answer(rows_from_metrics(record), params.get("ci_level") or 95)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{metrics}: not a segmentation metrics record ({exc!r})") from None
    forest = image(
        segment_dir / "forest.png",
        "Forest plot: each condition's test Dice minus real+classical's, paired per patient, "
        "with its CI; one panel per training size",
    )
    produced = bool(forest or text)
    return {
        "id": "summary",
        "title": "What this run shows",
        "produced": produced,
        "profile": profile_text(params),
        "forest": forest,
        "answer": text,
        "reason": ""
        if produced
        else f"No segmentation output in this run (nothing in {segment_dir}), so there is no "
        "answer to the question whether synthetic data beats classical augmentation.",
    }


@dataclass(frozen=True)
class Inputs:
    """The stage output folders the report reads (each an argument of ``gvae report``)."""

    tables: Path  # <dataset>/table.md, table.csv, samples.png (gvae tables)
    train_runs: Path  # <dataset>/<model>/s<seed>/samples/step-*.png (gvae train)
    ct_quality: Path  # <set>/grid.png, memorization.json (gvae ct-quality)
    ct_quality_report: Path  # table.md, table.csv (gvae ct-quality-report)
    segment: Path  # table.md, results.csv, metrics.json, *.png (gvae segment)
    usefulness: Path | None = None  # table.md, table.csv, points.csv (gvae usefulness)


def build_context(
    inputs: Inputs,
    datasets: list[str],
    models: list[str],
    ct_models: list[str],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Return the template context of the whole report.

    ``datasets`` are the sanity datasets of this run (``mnist.datasets``); every known sanity
    dataset gets a section, the others marked as not produced. ``models`` orders the sanity
    grids (the ``models`` section), ``ct_models`` the CT sets (``ct.models``).
    """
    known = [*SANITY_DATASETS, *(d for d in datasets if d not in SANITY_DATASETS)]
    sanity = [
        sanity_section(ds, ds in datasets, inputs.tables, inputs.train_runs, models) for ds in known
    ]
    ct = ct_quality_section(inputs.ct_quality, inputs.ct_quality_report, ct_models)
    segmentation = segment_section(inputs.segment, inputs.usefulness)
    sections = [*sanity, ct["quality"], ct["memorization"], segmentation]
    return {
        "title": "GVAE pipeline: run report",
        "summary": summary_section(inputs.segment, provenance["params"]),
        "toc": [{"id": s["id"], "title": s["title"], "produced": s["produced"]} for s in sections],
        "sanity": sanity,
        "ct_quality": ct["quality"],
        "memorization": ct["memorization"],
        "segmentation": segmentation,
        "provenance": provenance,
        "not_produced": NOT_PRODUCED,
    }
