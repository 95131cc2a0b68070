"""``gvae train``: fit one registry model on one dataset with the shared trainer.

Thin I/O around :func:`models.train.trainer.train`; the model and trainer configs come from
``params.yaml`` (``models.<name>`` and ``train``, with the ``paper`` profile applied when
``profile: paper``; for CT also the ``ct`` overrides), and both are stored in the checkpoint so
``generate`` rebuilds the network.

CT runs train on (image, mask) pairs of the slices folder's TRAINING split only, optionally on
the patient subset of a low-data regime (``--fraction``): the subset is
:func:`pipeline.augment.segment.experiment.training_subset`, the very function the segmentation
experiment uses, so a generator never sees a patient its segmentation network may not see.
The run folder's ``data.json`` records the slices' geometry (size, pixel spacing, window) and
the patients used, which ``generate`` carries into its output and checks against.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the stage opens the process group and trains
data-parallel (:mod:`models.train.distributed`): every rank loads the data and builds the model,
rank
0 alone writes the run folder and prints, and ``train.batch_size`` is the global batch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Literal

from common.atomic import write_json
from pipeline.augment.segment.experiment import DATA_JSON, fraction_dirname
from pipeline.errors import StageError
from pipeline.params.loader import load_section
from pipeline.params.models import load_model_config
from pipeline.sanity.datasets import CT, DATASETS, load_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--model", required=True, help="registry name, e.g. gvae")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data", required=True, type=Path, help="output of the data stage")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoint, logs)")
    parser.add_argument(
        "--fraction",
        type=float,
        default=None,
        help="CT only: train on this fraction of the training patients (segment.* subset rule)",
    )
    parser.add_argument(
        "--each-fraction",
        action="store_true",
        help="CT only: one run per segment.fractions entry, into OUT/f<fraction>",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed instead of train.seed (the sanity stages' mnist.seeds)",
    )
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    resume.add_argument(
        "--resume-if-compatible",
        action="store_true",
        help="continue a checkpoint of the same model, data and settings, else start afresh "
        "(what `dvc repro` uses, so an interrupted long run goes on where it stopped)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def ct_training_cases(params_path: Path, data_dir: Path, fraction: float | None) -> list[str]:
    """The training patients of a CT run: the train split, or its ``fraction`` subset."""
    from pipeline.augment.segment.experiment import training_subset
    from pipeline.io.shards import read_index

    train_cases = list(read_index(data_dir)["splits"]["train"]["cases"])
    if not train_cases:
        raise StageError(f"{data_dir}: the train split has no patient")
    if fraction is None:
        return sorted(train_cases)
    seg = load_section(params_path, "segment")
    try:
        return training_subset(train_cases, fraction, seg.subset_seed, seg.min_patients)
    except ValueError as exc:
        raise StageError(f"{params_path}: --fraction {fraction}: {exc}") from None


def _data_record(data_dir: Path, cases: list[str], fraction: float | None, n: int) -> dict:
    from pipeline.io.shards import read_index

    index = read_index(data_dir)
    keys = ("size", "pixel_mm", "fov_mm", "window", "axes")
    return {
        "dataset": "pancreas",
        "slices": str(data_dir),
        **{k: index.get(k) for k in keys},
        "fraction": fraction,
        "cases": cases,
        "n_pairs": n,
    }


def run(
    params_path: Path,
    model_name: str,
    dataset: str,
    data_dir: Path,
    out_dir: Path,
    resume: bool | Literal["if_compatible"] = False,
    progress: bool = True,
    fraction: float | None = None,
    seed: int | None = None,
) -> dict:
    """Train ``model_name`` on ``dataset``'s train split; write the run folder; return a summary.

    ``seed`` replaces ``train.seed`` (initial weights, batches, noise) when given.

    ``resume``: False (start afresh), True (continue the checkpoint; an incompatible one is a
    ``StageError``) or ``"if_compatible"`` (continue it if it is compatible, else start afresh
    and say why; see :func:`models.train.trainer.train`).
    """
    import torch

    from models.registry import build_model
    from models.train import distributed
    from models.train.checkpoint import ResumeError
    from models.train.trainer import train

    is_ct = dataset in CT
    if fraction is not None and not is_ct:
        raise StageError(f"--fraction selects CT training patients; {dataset} has none")
    model_cfg, train_cfg = load_model_config(params_path, model_name, ct=is_ct)
    if seed is not None:
        if seed < 0:
            raise StageError(f"--seed must be >= 0, got {seed}")
        train_cfg = train_cfg.model_copy(update={"seed": seed})
    cases = ct_training_cases(params_path, data_dir, fraction) if is_ct else None
    images, _ = load_images(dataset, data_dir, "train", cases=cases)
    if len(images) < train_cfg.batch_size:
        raise StageError(
            f"{data_dir}: {len(images)} training pairs of {len(cases or [])} patient(s) are fewer "
            f"than one batch ({train_cfg.batch_size}); lower ct.train.batch_size or add patients"
        )
    # The trainer seeds everything after construction; initial weights are seeded here.
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_name, model_cfg, channels=images.shape[1], size=images.shape[-1])
    ctx = distributed.current()  # None in one process
    main = ctx is None or ctx.rank == 0
    if is_ct and main:
        write_json(out_dir / DATA_JSON, _data_record(data_dir, cases, fraction, len(images)))
    try:
        summary = train(model, images, train_cfg, out_dir, resume=resume, progress=progress)
    except ResumeError as exc:
        raise StageError(f"{exc} (--resume-if-compatible starts afresh instead)") from None
    summary = {"model": model_name, "dataset": dataset, "n_train": len(images), **summary}
    if is_ct:
        summary["cases"] = cases
    if main and (summary.get("steps_run") or not (out_dir / "summary.json").exists()):
        # A resume with nothing left to run keeps the figures of the run that did the work.
        write_json(out_dir / "summary.json", summary)
    if ctx is not None:
        ctx.barrier()  # the run folder is complete when any rank returns
    return summary


def _drop_stale_fractions(out: Path, fractions: list[float]) -> None:
    # A persisted per-model folder may hold fractions the params no longer list; later stages
    # must not mistake such a generator for one of this grid.
    keep = {fraction_dirname(f) for f in fractions}
    for sub in sorted(out.glob("f*")) if out.is_dir() else []:
        if sub.is_dir() and sub.name not in keep and (sub / "checkpoint.pt").exists():
            print(f"{sub}: removed (fraction not in segment.fractions)", file=sys.stderr)
            shutil.rmtree(sub)


def main(args: argparse.Namespace) -> int:
    """CLI entry: train (once, or once per fraction) and print a summary line per run.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) all of it runs inside one process group.
    """
    from models.train.distributed import process_group

    if args.each_fraction and args.fraction is not None:
        raise StageError("give --fraction F or --each-fraction, not both")
    with process_group() as ctx:
        return _train_runs(args, main=ctx is None or ctx.rank == 0)


def _train_runs(args: argparse.Namespace, main: bool) -> int:
    if args.each_fraction:
        fractions = load_section(args.params, "segment").fractions
        runs = [(f, args.out / fraction_dirname(f)) for f in fractions]
        if args.resume_if_compatible and main:
            _drop_stale_fractions(args.out, fractions)
    else:
        runs = [(args.fraction, args.out)]
    for fraction, out in runs:
        summary = run(
            Path(args.params),
            args.model,
            args.dataset,
            args.data,
            out,
            resume="if_compatible" if args.resume_if_compatible else args.resume,
            progress=not args.no_progress,
            fraction=fraction,
            seed=args.seed,
        )
        if not main:
            continue
        rate = summary.get("img_per_s")
        speed = (
            f", {rate:.1f} img/s, {summary['seconds']:.0f} s" if rate else " (nothing left to run)"
        )
        where = "" if fraction is None else f" ({len(summary.get('cases', []))} patients)"
        print(
            f"{summary['model']} on {summary['dataset']}{where}: {summary.get('steps')} "
            f"steps{speed} -> {out}"
        )
    return 0
