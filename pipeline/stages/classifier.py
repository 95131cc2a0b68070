"""Stage ``classifier``: train the in-domain CNN on a ``gvae mnist`` folder and score it.

Writes ``classifier.pt`` (weights + the config that rebuilds the network + the params) and
``metrics.json`` (test accuracy). The evaluation stage uses this network for mode coverage,
FID and precision/recall of generated images.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common.atomic import atomic_path, write_json
from pipeline.params.loader import load_section


def run(params, data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Train on the train split of ``data_dir``, evaluate on its test split, write outputs."""
    import torch

    from models.eval.classifier import accuracy, num_threads, save_classifier, train_classifier
    from pipeline.sanity.data import load_mnist_split

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    x, y = (torch.from_numpy(a) for a in load_mnist_split(data_dir, "train"))
    xt, yt = (torch.from_numpy(a) for a in load_mnist_split(data_dir, "test"))
    t0, c0 = time.perf_counter(), time.process_time()
    model = train_classifier(x, y, **params.model_dump())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    dataset = _dataset_name(data_dir)
    with num_threads(params.threads):
        test_acc, train_acc = accuracy(model, xt, yt), accuracy(model, x[:10000], y[:10000])
    metrics = {
        "dataset": dataset,
        "test_accuracy": test_acc,
        "train_accuracy_first_10000": train_acc,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu, 1),
    }
    with atomic_path(out_dir / "classifier.pt") as tmp:
        save_classifier(tmp, model, {"params": params.model_dump(mode="json"), "dataset": dataset})
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _dataset_name(data_dir: Path) -> str | None:
    try:
        return json.loads((data_dir / "info.json").read_text()).get("dataset")
    except (OSError, ValueError):
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gvae classifier``."""
    parser.add_argument("--data", required=True, help="folder written by `gvae mnist`")
    parser.add_argument("--out", required=True, help="output folder for classifier.pt + metrics")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``gvae classifier``."""
    from pipeline.errors import StageError

    params = load_section(args.params, "classifier")
    try:
        metrics = run(params, args.data, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(str(exc)) from exc
    print(f"classifier: test accuracy {metrics['test_accuracy']:.4f} -> {args.out}")
    return 0
