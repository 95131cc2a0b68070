"""``gvae plots-template``: parse the options, run the phase, report.

The work and its documentation: :mod:`pipeline.report.plots_template`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import StageError
from pipeline.report.plots_template import (
    DEFAULT_OUT,
    NPM_DIR,
    PlotsTemplateError,
    build,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument(
        "--npm-dir",
        type=Path,
        default=NPM_DIR,
        metavar="DIR",
        help="folder of package.json + package-lock.json (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="FILE",
        help="template to write; .dvc/config's plots.html_template (default: %(default)s)",
    )


def main(args: argparse.Namespace) -> int:
    """Build the template; print its path. Errors become the CLI's ``StageError``."""
    try:
        out = build(args.npm_dir, args.out)
    except PlotsTemplateError as exc:
        raise StageError(str(exc)) from None
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline.stages.plots_template`
    _parser = argparse.ArgumentParser(prog="python -m pipeline.stages.plots_template")
    add_arguments(_parser)
    _args = _parser.parse_args()
    try:
        print(build(_args.npm_dir, _args.out))
    except PlotsTemplateError as exc:
        sys.exit(f"plots-template: error: {exc}")
