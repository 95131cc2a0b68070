"""The ``gvae`` console script: one subcommand per stage.

Each stage module exposes ``add_arguments(parser)`` and ``main(args) -> int``. Modules are
imported only for the subcommand that runs, so ``gvae ingest`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.errors import ParamsError, StageError
from pipeline.params.loader import DEFAULT_PARAMS

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("pipeline.stages.phantom", "write the synthetic abdominal CT cohort (TCIA layout)"),
    "fetch-tcia": ("pipeline.stages.fetch_tcia", "download a TCIA collection + labels (resumable)"),
    "ingest": ("pipeline.stages.ingest", "DICOM series + NIfTI labels -> HU volumes + manifest"),
    "slices": ("pipeline.stages.slices", "window, crop and split volumes or 2D pairs into shards"),
    "mnist": ("pipeline.stages.mnist", "download (or read a mirror of) MNIST / Fashion-MNIST"),
    "classifier": ("pipeline.stages.classifier", "train the in-domain classifier for metrics"),
    "train": ("pipeline.stages.train", "train one registry model with the shared trainer"),
    "sample": ("pipeline.stages.sample", "draw synthetic images from a trained run"),
    "evaluate": ("pipeline.stages.evaluate", "MMD, MS-SSIM, ELBO/KL/IWAE, mode coverage, FID"),
    "tables": ("pipeline.stages.tables", "comparison table and side-by-side sample figure"),
    "generate": ("pipeline.stages.generate", "synthetic (image, mask) CT pairs from a trained run"),
    "ct-features": ("pipeline.stages.ct_features", "train the in-domain CT feature net"),
    "ct-quality": ("pipeline.stages.ct_quality", "synthetic vs real test CT: MMD, FID, anatomy"),
    "ct-quality-report": ("pipeline.stages.ct_quality_report", "CT quality comparison table"),
    "segment": ("pipeline.stages.segment", "MONAI UNet per condition: Dice on held-out patients"),
    "usefulness": ("pipeline.stages.usefulness", "which synthetic-set quality predicts Dice gain"),
    "report": ("pipeline.stages.report", "one self-contained HTML report of the whole run"),
    "export": ("pipeline.stages.export", "synthetic set -> DICOM study (SC + SEG), PACS C-STORE"),
    "serve": ("pipeline.stages.serve", "Prefect: the DAG on a cron schedule, exports on request"),
    "plots-template": ("pipeline.stages.plots_template", "offline HTML page for `dvc plots show`"),
    "view": ("pipeline.stages.view", "OHIF viewer on loopback for a PACS's DICOMweb (exports)"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gvae",
        description="GVAE medical data-augmentation pipeline",
        epilog="\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="stage to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``gvae COMMAND [options]`` to the stage module; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in {"-h", "--help"}:
        top.print_help()
        return 0 if argv else 2
    command = top.parse_args(argv[:1]).command
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"gvae {command}", description=help_)
    parser.add_argument(
        "--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)"
    )
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except (ParamsError, StageError, OSError) as exc:
        # OSError: a missing input, an unwritable folder or a full disk; its message names the
        # file (the stages' own FileNotFoundErrors also say which stage makes it).
        print(f"gvae {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
