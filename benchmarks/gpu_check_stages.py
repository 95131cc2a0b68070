"""The CT stages ``benchmarks/gpu_check.py`` runs without DVC, and the params they run with.

The params are ``params.yaml`` with a profile applied (``paper`` on the GPU, the default ``cpu``
in a dry run) and ``PARAMS`` (dry run: also ``DRY_PARAMS``) merged over it, written as one
profile-free file that every stage and benchmark of the run reads. Standard library at import;
the params loader (pydantic, PyYAML) is imported when the params are written, after the
carried wheels are installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.gpu_check_lib import REPO, folder_bytes, numbers
from common.atomic import write_json

PROFILES = {"gpu": "paper", "dry": "cpu"}
# Over the profile: the real 2D cohort's slices as docs/results.md ran them (30 training and 13
# test patients), one generator, one fraction, one seed, a few hundred steps of everything.
PARAMS: dict[str, Any] = {
    "slices": {"source": "pairs", "fov_mm": 204.8,
               "split": {"train": 0.7, "val": 0.0, "test": 0.3}},
    "ct": {"models": ["gvae"],
           "train": {"steps": 300, "checkpoint_every": 300, "sample_every": 300}},
    "train": {"device": "cuda", "log_every": 50},
    "generate": {"n": 256},
    "ct_features": {"steps": 50},  # one CPU thread (ct_features.threads): about 0.5 s a step
    "segment": {"conditions": ["real", "real+classical", "real+syn"], "models": ["gvae"],
                "fractions": [1.0], "seeds": [0], "steps": 300, "device": "cuda",
                "n_boot": 1000, "workers": 1},
}  # fmt: skip
DRY_PARAMS: dict[str, Any] = {
    "slices": {"size": 32},
    "ct": {"train": {"steps": 3, "batch_size": 8, "checkpoint_every": 3, "sample_every": 3}},
    "train": {"device": "cpu", "log_every": 1},
    "generate": {"n": 16, "batch_size": 16},
    "ct_features": {"steps": 3, "batch_size": 16},
    "ct_quality": {"n_samples": 32, "ms_ssim_pairs": 8},
    "segment": {"steps": 3, "batch_size": 8, "device": "cpu", "n_boot": 100, "threads": 1},
}
# Seconds each stage may take (train_ct, generate and ct_quality: per model). The run's budget
# (gpu_check.BUDGET_S) cuts them shorter when less is left.
LIMITS_S = {"train_ct": 150, "generate": 90, "segment": 120, "ct_features": 60, "ct_quality": 60}


# The sections the run's stages and benchmarks read (the others, e.g. flows, need packages the
# GPU check does not carry).
SECTIONS = ("slices", "train", "ct", "generate", "ct_features", "ct_quality", "segment")


def write_params(mode: str, dest: Path) -> tuple[Path, list[str]]:
    """Write the run's params file to ``dest`` and validate the sections it uses; return it and
    ``ct.models``. A misspelt key in ``PARAMS`` fails here, naming it."""
    import yaml

    from pipeline.params.loader import deep_merge, load_section, read_yaml, resolve_profile

    raw = read_yaml(REPO / "params.yaml")
    over = PARAMS if mode == "gpu" else deep_merge(PARAMS, DRY_PARAMS)
    merged = deep_merge(resolve_profile({**raw, "profile": PROFILES[mode]}), over)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(merged, sort_keys=False))
    for section in SECTIONS:
        load_section(dest, section)
    return dest, list(merged["ct"]["models"])


@dataclass(frozen=True)
class Stage:
    """One stage command (``gvae <argv>``), what it needs first, and its figures."""

    name: str
    argv: list[str]
    limit_s: float
    needs: tuple[str, ...]
    figures: Callable[[], dict]


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def slices_figures(folder: Path) -> dict:
    """Size, pixel spacing and the patients and slices of each split of a slices folder."""
    index = _read(folder / "index.json")
    out = {"size": index["size"], "pixel_mm": index["pixel_mm"]}
    for split, entry in index["splits"].items():
        out[f"{split}_cases"] = len(entry["cases"])
        out[f"{split}_slices"] = entry["slices"]
    return out


def numbers_of(path: Path) -> dict:
    """The numeric top-level fields of a JSON file."""
    return numbers(_read(path))


def per_fraction(folder: Path, name: str) -> dict:
    """The numeric fields of ``<folder>/f*/<name>`` by fraction folder."""
    return {f.parent.name: numbers_of(f) for f in sorted(folder.glob(f"f*/{name}"))}


def segment_figures(folder: Path) -> dict:
    """Dice, HD95 and seconds of every condition (``metrics.json``: fraction -> condition)."""
    keep = ("dice", "dice_lo", "dice_hi", "hd95_mm", "seconds", "n_real", "n_synthetic")
    metrics = _read(folder / "metrics.json")
    return {
        f"{fraction}/{cond}": {k: row.get(k) for k in keep}
        for fraction, rows in metrics.items()
        if isinstance(rows, dict)
        for cond, row in rows.items()
        if isinstance(row, dict)
    }


def stage_plan(models: list[str], params: Path, slices: Path, work: Path) -> list[Stage]:
    """The CT stages after ``slices`` in an order dvc.yaml allows (segment needs only the
    synthetic sets, so it comes before the CPU-only feature net and quality stages)."""
    p, s = ["--params", str(params)], str(slices)
    run, syn, feats, seg = work / "models", work / "synthetic", work / "features", work / "segment"
    train = ["--dataset", "pancreas", "--data", s, "--each-fraction", "--no-progress"]
    plan = [
        Stage(f"train_ct:{m}", ["train", *p, "--model", m, *train, "--out", str(run / m)],
              LIMITS_S["train_ct"], ("slices",), partial(per_fraction, run / m, "summary.json"))
        for m in models
    ]  # fmt: skip
    plan += [
        Stage(f"generate:{m}",
              ["generate", *p, "--run", str(run / m), "--each-fraction", "--out", str(syn / m)],
              LIMITS_S["generate"], (f"train_ct:{m}",),
              partial(per_fraction, syn / m, "summary.json"))
        for m in models
    ]  # fmt: skip
    plan.append(
        Stage("segment",
              ["segment", *p, "--slices", s, "--synthetic-root", str(syn), "--out", str(seg)],
              LIMITS_S["segment"], tuple(f"generate:{m}" for m in models),
              partial(segment_figures, seg))
    )  # fmt: skip
    plan.append(
        Stage("ct_features", ["ct-features", *p, "--slices", s, "--out", str(feats)],
              LIMITS_S["ct_features"], ("slices",), partial(numbers_of, feats / "summary.json"))
    )  # fmt: skip
    for m in models:
        quality = work / "quality" / m
        sets = ["--synthetic", str(syn / m / "f1.0"), "--fractions", str(syn / m)]
        plan.append(
            Stage(f"ct_quality:{m}",
                  ["ct-quality", *p, "--slices", s, "--features", str(feats), *sets,
                   "--out", str(quality)],
                  LIMITS_S["ct_quality"], ("ct_features", f"generate:{m}"),
                  partial(numbers_of, quality / "metrics.json"))
        )  # fmt: skip
    return plan


# ----------------------------------------------------------------------------- the real slices
def pairs_source() -> Path | None:
    """The mirror's 2D Pancreas-CT pairs (``$GVAE_DATA_MIRROR`` or ``../shared/data``)."""
    root = Path(os.environ.get("GVAE_DATA_MIRROR") or REPO.parent / "shared" / "data")
    folder = root / "pancreas_ct_slices"
    return folder if (folder / "images").is_dir() else None


def subset_pairs(source: Path, dest: Path, patients: int) -> Path:
    """``dest`` with links to the image/mask pairs of the first ``patients`` patients."""
    names = sorted(p.name for p in (source / "images").iterdir())
    keep = sorted({n.rsplit("-", 1)[0] for n in names})[:patients]
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for name in (n for n in names if n.rsplit("-", 1)[0] in keep):
            (dest / sub / name).symlink_to(source / sub / name)
    return dest


def prepare_data(data_dir: Path, mode: str, patients: int | None = None) -> None:
    """The real slices of a run of ``mode`` (gpu, dry): the slices stage with that run's params
    from the mirror (its first ``patients`` patients when given) into ``data_dir/slices``,
    with the params and ``prepared.json`` (mode, the stage's seconds here) beside it."""
    source = pairs_source()
    if source is None:
        raise SystemExit("no data mirror: set GVAE_DATA_MIRROR (pancreas_ct_slices/ inside)")
    data_dir.mkdir(parents=True, exist_ok=True)
    params, _ = write_params(mode, data_dir / "params.yaml")
    cmd = [sys.executable, "-m", "pipeline.cli", "slices", "--params", str(params)]
    with tempfile.TemporaryDirectory() as tmp:
        if patients is not None:
            source = subset_pairs(source, Path(tmp), patients)
        start = time.perf_counter()
        subprocess.run(
            [*cmd, "--input", str(source), "--out", str(data_dir / "slices")], check=True
        )
        seconds = time.perf_counter() - start
    record = {"mode": mode, "seconds_here": seconds, "cpus_here": os.cpu_count()}
    write_json(data_dir / "prepared.json", record)
    print(f"{data_dir}: {folder_bytes(data_dir) / 2**20:.1f} MiB")
