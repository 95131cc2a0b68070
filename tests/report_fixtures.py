"""A tiny run tree for ``gvae report``: every input it reads, in the formats the stages write.

Tables and the segmentation outputs come from the writers themselves (``gvae tables``'
``build_table``, ``ct-quality-report``'s ``run``,
``pipeline.augment.segment.results.write_results``);
images are small PNGs of known sizes; ``memorization.json`` and ``dvc.lock`` follow the
records ``gvae ct-quality`` and DVC write.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

SANITY_MODELS = ["vae", "gvae"]
CT_MODELS = ["gvae", "vae"]
# name -> (width, height) of every image the report must show, for the decode checks.
IMAGE_SIZES = {
    "tables/mnist/samples.png": (60, 24),
    "tables/mnist/stability.png": (64, 26),
    "models/mnist/vae/s0/samples/step-10.png": (20, 20),
    "models/mnist/gvae/s0/samples/step-10.png": (22, 22),
    "ct/quality/gvae/grid.png": (40, 30),
    "ct/quality/vae/grid.png": (42, 30),
    "ct/quality/real/grid.png": (44, 30),
}
FLAGGED_CASE = "syn-vae"  # the one near-copy of the fixture's memorization records
LOCK_MD5 = {"data/tables/mnist": "0123456789abcdef0123456789abcdef.dir"}


def png(path: Path, size: tuple[int, int], seed: int, mode: str = "L") -> None:
    """Write a noisy PNG of ``size`` (width, height) at ``path`` (a real, decodable image)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3 if mode == "RGB" else 1), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)


def _quality_metrics(reference: bool, seed: int) -> dict:
    from pipeline.augment.quality.metrics import TABLE_COLUMNS

    rng = np.random.default_rng(seed)
    keys = [k for k, _, _ in TABLE_COLUMNS] + ["ms_ssim_real", "real_hu_mean", "real_hu_sd"]
    return {"reference": float(reference), **{k: float(rng.uniform(0, 1)) for k in keys}}


def _memorization(name: str, n: int, flagged: int) -> dict:
    samples = [
        {
            "case_id": f"syn-{name}",
            "slice_index": i,
            "distance": 3.0 + i,
            "near_copy": i < flagged,
            "nn_train_case": "PANCREAS_0001",
            "nn_train_slice": 10 + i,
        }
        for i in range(n)
    ]
    return {
        "set": "real test" if name == "real" else "synthetic",
        "quantile": 0.05,
        "downsample": 2,
        "threshold": 3.5,
        "share": flagged / n,
        "n_flagged": flagged,
        "samples": samples,
    }


def _segment_records() -> list[dict]:
    records = []
    for condition, base in (("real", 0.5), ("real+syn:gvae", 0.6)):
        for fraction, n_train in ((1.0, 4), (0.5, 2)):
            patients = {
                f"PANCREAS_000{i}": {"dice": base - 0.1 * i + fraction / 10, "hd95": 10.0 + i}
                for i in range(1, 4)
            }
            records.append(
                {
                    "condition": condition,
                    "fraction": fraction,
                    "seed": 0,
                    "n_train_patients": n_train,
                    "n_real": 10 * n_train,
                    "n_synthetic": 0 if condition == "real" else 10 * n_train,
                    "patients": patients,
                    "seconds": 1.0,
                }
            )
    return records


def _faithfulness_and_usefulness(ct: Path) -> None:
    """The segment stage's faithfulness table and ``gvae usefulness``'s output, by their writers."""
    from pipeline.augment import usefulness as U
    from pipeline.augment.segment import faithfulness as F

    records = [{"model": m, "fraction": f, "seed": 0, "n_train_patients": 4, "n_scored": 8,
                "faithfulness": 0.1 * i + f / 10, "ceiling": 0.5}
               for i, m in enumerate(CT_MODELS) for f in (1.0, 0.1)]  # fmt: skip
    rows = F.aggregate(records)
    (ct / "segment/faithfulness.md").write_text(F.table_markdown(rows))
    (ct / "segment/faithfulness.csv").write_text(F.table_csv(rows))
    for i, m in enumerate(CT_MODELS):
        by_fraction = {f"f{f}": {"fid": 10.0 + i, "mmd_x1e4": 1.0 + f, "precision": 0.5,
                                 "recall": 0.4, "ms_ssim": 0.2, "n_samples": 8}
                       for f in (1.0, 0.1)}  # fmt: skip
        (ct / "quality" / m / "by_fraction.json").write_text(json.dumps(by_fraction))
    U.run(ct / "quality", ct / "segment", ct / "usefulness")


def make_run_tree(root: Path, datasets: tuple[str, ...] = ("mnist",)) -> dict[str, Path]:
    """Write params, stage outputs, ``dvc.lock`` and a clean git commit under ``root``.

    Returns the paths ``gvae report`` takes (params, the input folders, lock, repo, out).
    """
    from pipeline.augment.quality import report as ct_quality_report
    from pipeline.augment.segment.results import write_results
    from pipeline.params.segment import SegmentParams
    from pipeline.sanity.tables import build_table

    data = root / "data"
    params = {
        "mnist": {"datasets": list(datasets), "models": list(SANITY_MODELS)},
        "ct": {"models": CT_MODELS},
        "segment": {"models": CT_MODELS},  # the grid reads only the generators ct.models trains
        "models": {m: {} for m in SANITY_MODELS},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for i, (rel, size) in enumerate(IMAGE_SIZES.items()):
        png(data / rel, size, seed=i, mode="RGB" if rel.startswith("ct/") else "L")
    # An older training grid: the report must show the highest step, not the last name.
    png(data / "models/mnist/vae/s0/samples/step-9.png", (18, 18), seed=99)
    rows = [{"model": m, "mmd_x1e4": 10.0 + i, "fid": 2.0} for i, m in enumerate(SANITY_MODELS)]
    md, csv_text = build_table(rows, {})
    (data / "tables/mnist/table.md").write_text("# mnist: generative models, one run\n\n" + md)
    (data / "tables/mnist/table.csv").write_text(csv_text)
    evals = data / "ct/quality"
    for i, name in enumerate([*CT_MODELS, "real"]):
        metrics = _quality_metrics(name == "real", i)
        if name != "real":  # gvae ct-quality --fractions: near-copy share per training fraction
            metrics.update({"near_copy_share_f1.0": 0.0, "near_copy_share_f0.1": 0.01 * i})
        (evals / name / "metrics.json").write_text(json.dumps(metrics))
        record = _memorization(name, n=6, flagged=2 if name == "vae" else 0)
        (evals / name / "memorization.json").write_text(json.dumps(record))
    ct_quality_report.run(evals, data / "ct/quality_report", order=CT_MODELS)
    (data / "ct/segment").mkdir(parents=True)
    write_results(_segment_records(), SegmentParams(n_boot=200), data / "ct/segment")
    _faithfulness_and_usefulness(data / "ct")
    lock = {
        "schema": "2.0",
        "stages": {
            "tables@mnist": {
                "cmd": "gvae tables",
                "outs": [
                    {
                        "path": "data/tables/mnist",
                        "hash": "md5",
                        "md5": LOCK_MD5["data/tables/mnist"],
                        "size": 1234,
                        "nfiles": 3,
                    }
                ],
            },
            "report": {
                "cmd": "gvae report",
                "outs": [
                    {
                        "path": "data/report/index.html",
                        "hash": "md5",
                        "md5": "ffffffffffffffffffffffffffffffff",
                        "size": 1,
                    }
                ],
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    git = [
        "git",
        "-C",
        str(root),
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.org",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fixture run"], check=True)
    return {
        "params": root / "params.yaml",
        "tables": data / "tables",
        "train_runs": data / "models",
        "ct_quality": evals,
        "ct_quality_report": data / "ct/quality_report",
        "segment": data / "ct/segment",
        "usefulness": data / "ct/usefulness",
        "lock": root / "dvc.lock",
        "repo": root,
        "out": data / "report/index.html",
    }


def cli_args(paths: dict[str, Path]) -> list[str]:
    """``gvae report`` arguments for the ``paths`` of ``make_run_tree``."""
    flags = ["tables", "train_runs", "ct_quality", "ct_quality_report", "segment", "usefulness",
             "lock", "repo"]  # fmt: skip
    args = ["report", "--params", str(paths["params"]), "--out", str(paths["out"])]
    for flag in flags:
        args += [f"--{flag.replace('_', '-')}", str(paths[flag])]
    return args
