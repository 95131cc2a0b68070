"""``gvae report``: the whole run as one self-contained HTML file.

Reads the outputs of ``tables``, ``train``, ``ct-quality``, ``ct-quality-report`` and
``segment`` (each folder an option, defaulting to where ``dvc.yaml`` puts it) and writes one
HTML file that opens with the run's profile and what it is good for, the segmentation forest
plot and the answer computed from its metrics, then every table, sample grid and plot inlined
(base64 data URIs, inline CSS, no
external URL), the memorization summary, and provenance: git commit and dirtiness, the SHA-256
of the params file, and the md5 of each stage output recorded in ``dvc.lock``. Sections whose
inputs are absent say "not produced by this run". Core: ``pipeline.report``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.atomic import atomic_path
from pipeline.report.collect import Inputs, build_context
from pipeline.report.provenance import provenance
from pipeline.report.render import render_html


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    folders = (
        ("--tables", "data/tables", "folder of <dataset>/table.md, table.csv, samples.png"),
        ("--train-runs", "data/models", "folder of <dataset>/<model>/s<seed>/samples/step-*.png"),
        ("--ct-quality", "data/ct/quality", "folder of <set>/grid.png, memorization.json"),
        ("--ct-quality-report", "data/ct/quality_report", "folder of table.md, table.csv"),
        ("--segment", "data/ct/segment", "folder of table.md, metrics.json, forest.png, ..."),
        ("--usefulness", "data/ct/usefulness", "folder of table.md, table.csv, points.csv"),
    )
    for flag, default, help_ in folders:
        parser.add_argument(flag, type=Path, default=Path(default), help=f"{help_} (%(default)s)")
    parser.add_argument(
        "--lock", type=Path, default=Path("dvc.lock"), help="DVC lock file (%(default)s)"
    )
    parser.add_argument(
        "--repo", type=Path, default=Path("."), help="git checkout of the code (%(default)s)"
    )
    parser.add_argument("--out", required=True, type=Path, help="the HTML file to write")


def run(params: Path, inputs: Inputs, lock: Path, repo: Path, out: Path, shape: dict) -> str:
    """Build the report from the ``inputs`` folders, write it atomically to ``out``; return it.

    ``shape``: ``profile``, ``datasets``, ``models`` and ``ct_models`` of the params.
    """
    prov = provenance(params, lock, repo, out, shape)
    context = build_context(inputs, shape["datasets"], shape["models"], shape["ct_models"], prov)
    html = render_html(context)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return html


def run_shape(params: Path) -> dict:
    """Return what ``params`` says the run covers: profile, sanity datasets, models, CT models,
    and the scale the report's opening names (slice size, CT generator and UNet budgets, seeds,
    CI level of the segmentation tables)."""
    from pipeline.params.loader import load_section, read_yaml
    from pipeline.params.models import load_params_models

    ct = load_section(params, "ct")
    segment = load_section(params, "segment")
    slices = load_section(params, "slices")
    # The phantom stage's cases reach the slices only through ingest (source: volumes).
    phantom = (
        slices.source == "volumes"
        and "phantom" in Path(load_section(params, "ingest").images).parts
    )
    return {
        "profile": read_yaml(params).get("profile", "cpu"),
        "cohort": "phantom" if phantom else "patients",
        "datasets": list(load_section(params, "mnist").datasets),
        "models": load_params_models(params),
        "ct_models": list(ct.models),
        "image_size": slices.size,
        # ct.train is merged over the train section for CT runs: its steps win when given.
        "ct_train_steps": ct.train.get("steps", load_section(params, "train").steps),
        "segment_steps": segment.steps,
        # {fewest, most} seeds over the fractions (segment.seeds_by_fraction adds some)
        "segment_seeds": sorted({len(segment.seeds_of(f)) for f in segment.fractions}),
        "ci_level": round(100 * (1 - segment.alpha)),
    }


def main(args: argparse.Namespace) -> int:
    """CLI entry: write the report and print its path and size."""
    from pipeline.errors import StageError

    params = Path(args.params)
    inputs = Inputs(
        tables=args.tables,
        train_runs=args.train_runs,
        ct_quality=args.ct_quality,
        ct_quality_report=args.ct_quality_report,
        segment=args.segment,
        usefulness=args.usefulness,
    )
    try:
        html = run(params, inputs, args.lock, args.repo, args.out, run_shape(params))
    except ValueError as exc:  # an input that exists but cannot be read; names the file
        raise StageError(str(exc)) from None
    print(f"{args.out}: {len(html.encode('utf-8')) / 1e6:.2f} MB")
    return 0
