"""``gvae train``: fit one registry model on one dataset with the shared trainer.

Thin I/O around :func:`models.trainer.train`; the model and trainer configs come from
``params.yaml`` (``models.<name>`` and ``train``, with the ``paper`` profile applied when
``profile: paper``), and both are stored in the checkpoint so ``generate`` rebuilds the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_model_config
from pipeline.datasets import DATASETS, load_images
from pipeline.io.atomic import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the stage's options."""
    parser.add_argument("--model", required=True, help="registry name, e.g. gvae")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data", required=True, type=Path, help="output of the data stage")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoint, logs)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(
    params_path: Path,
    model_name: str,
    dataset: str,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train ``model_name`` on ``dataset``'s train split; write the run folder; return a summary."""
    import torch

    from models.registry import build_model
    from models.trainer import train

    model_cfg, train_cfg = load_model_config(params_path, model_name)
    images, _ = load_images(dataset, data_dir, "train")
    # The trainer seeds everything after construction; initial weights are seeded here.
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_name, model_cfg, channels=images.shape[1], size=images.shape[-1])
    summary = train(model, images, train_cfg, out_dir, resume=resume, progress=progress)
    summary = {"model": model_name, "dataset": dataset, **summary}
    if summary.get("steps_run") or not (out_dir / "summary.json").exists():
        # A resume with nothing left to run keeps the figures of the run that did the work.
        write_json(out_dir / "summary.json", summary)
    return summary


def main(args: argparse.Namespace) -> int:
    """CLI entry: train and print the summary line."""
    summary = run(
        Path(args.params),
        args.model,
        args.dataset,
        args.data,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    rate = summary.get("img_per_s")
    speed = f", {rate:.1f} img/s" if rate else " (nothing left to run)"
    print(f"{summary['model']} on {summary['dataset']}: {summary.get('steps')} steps{speed}")
    return 0
