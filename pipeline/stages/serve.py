"""``gvae serve``: run the DVC DAG on the ``flows`` schedule and clinician exports on request.

Registers two Prefect deployments with the Prefect server of ``PREFECT_API_URL`` (start one
with ``prefect server start``) and executes their flow runs in this process until Ctrl-C:
``dvc-dag/<flows.deployment>`` on ``flows.cron`` in ``flows.timezone``, and
``clinician-export/<flows.export.deployment>``, run with ``prefect deployment run``.
``--register-only`` registers them and returns (runs then wait for a ``gvae serve``).
``--prefect-yaml FILE`` writes the same deployments as a prefect.yaml for ``prefect deploy``
on a process work pool (``flows.work_pool``) and returns: Prefect as a service, run by
``prefect worker start``. It needs no API.
With ``--root DIR``, a relative ``--params`` (the default ``params.yaml`` too) is DIR's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import StageError
from pipeline.params.loader import load_section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="repository root the flows run in (default: the current directory); "
        "a relative --params is read from DIR",
    )
    parser.add_argument(
        "--register-only",
        action="store_true",
        help="register (update) the deployments and return instead of serving them",
    )
    parser.add_argument(
        "--prefect-yaml",
        type=Path,
        metavar="FILE",
        help="write the deployments as a prefect.yaml (work pool flows.work_pool) for "
        "`prefect deploy --all` and a `prefect worker`, and return",
    )


def params_path(root: Path, params: str | Path) -> Path:
    """Return the params file the deployments use: ``params`` itself when absolute, else
    ``root / params``, so ``gvae serve --root DIR`` reads DIR's params.yaml from any folder."""
    params = Path(params)
    return params if params.is_absolute() else Path(root) / params


def main(args: argparse.Namespace) -> int:
    """CLI entry: check the params and the API address, then register or serve."""
    params = params_path(args.root, args.params)
    settings = load_section(params, "flows")  # a bad cron fails before Prefect starts
    if not (args.root / "dvc.yaml").is_file():
        raise StageError(f"{args.root}: no dvc.yaml; --root must be the repository root")
    from pipeline.flows import deploy

    if args.prefect_yaml:
        deploy.write_prefect_yaml(args.prefect_yaml, args.root, params)
        print(f"gvae serve: wrote {args.prefect_yaml} (work pool {settings.work_pool})")
        return 0
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # Without a server nothing creates the scheduled runs: Prefect's ephemeral API has no
        # scheduler, so `serve` would wait forever.
        raise StageError(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    if args.register_only:
        for name, ident in deploy.register(args.root, params).items():
            print(f"gvae serve: registered {name} ({ident})")
        return 0
    print(
        f"gvae serve: dvc-dag/{settings.deployment} at '{settings.cron}' ({settings.timezone}), "
        f"clinician-export/{settings.export.deployment} on request; Ctrl-C stops"
    )
    deploy.serve(args.root, params)
    return 0
