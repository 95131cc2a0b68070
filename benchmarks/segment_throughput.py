"""Segmentation training throughput (images/s) of ``gvae segment``'s training function.

    python benchmarks/segment_throughput.py [--sizes 64 128] [--augment none all]
        [--warmup 1] [--steps 10] [--repeats 1] [--batch-size N] [--threads N] [--workers N]
        [--augment-backend monai|batched] [--channels-last | --no-channels-last]
        [--compile | --no-compile] [--precision auto|fp32|bf16] [--compare]
        [--device auto] [--json FILE]

Runs ``pipeline.augment.segment.train.train_segmenter`` itself, the function every run of the
segmentation grid calls: MONAI's 2D UNet as configured in ``params.yaml`` (``segment.unet``,
profile applied), ``DiceCELoss(sigmoid=True, batch=True)``, Adam, the autocast of
``segment.precision`` (bf16 on CUDA by default), and the classical augmentation of
``segment.augment_backend`` for the flagged samples. ``--augment none`` is the ``real``
condition (no sample augmented), ``all`` the ``real+classical`` one (every sample drawn through
the augmentation). Data are random images in [-1, 1] with one disk per mask: the cost of a step
does not depend on the content. A warm-up run of ``--warmup`` steps comes first (its wall time,
``torch.compile``'s compilation included, is the ``warm-up s`` column); the timed run's clock
is the function's own (the training loop, after the network is built); with ``--repeats N``
the fastest of N timed runs counts (other processes on a shared machine only ever slow a run
down). ``--threads`` defaults to ``segment.threads``, as in the stage.

The speed switches (``--augment-backend``, ``--channels-last``, ``--compile``,
``--precision``) default to what ``params.yaml`` sets. ``--compare`` measures every row twice
in the same process, alternating: *before* (the code path before the switches: MONAI
per-sample augmentation, NCHW, no compile, precision auto, Adam's per-tensor loop) and
*after* (the switches as set, the ``switches`` column), and reports both rates and
after/before. ``--workers N`` runs N measuring processes at once (spawned, each with
``--threads`` threads, the timed runs started together) and reports their summed images/s:
the layout of ``segment.workers`` x ``segment.threads``. On CUDA also peak memory and mean GPU
utilisation. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline.augment.segment.grid as grid  # noqa: E402
import pipeline.augment.segment.train as train  # noqa: E402
from benchmarks import common  # noqa: E402
from models.train.trainer import resolve_device  # noqa: E402
from pipeline.params.loader import load_section, with_overrides  # noqa: E402
from pipeline.params.segment import SegmentParams  # noqa: E402

# The code path before the speed switches, what "before" of --compare measures: the switches'
# old values, the ones the grid's fingerprint keeps for runs made before them, and Adam's
# per-tensor loop (train.ADAM_FOREACH off).
BEFORE = dict(grid.SWITCHES)
SWITCHES = tuple(BEFORE)


@contextmanager
def code_path(before: bool):
    """Inside: ``train_segmenter`` steps Adam as before the switches (``before``) or as now."""
    saved, train.ADAM_FOREACH = train.ADAM_FOREACH, not before and train.ADAM_FOREACH
    try:
        yield
    finally:
        train.ADAM_FOREACH = saved


def random_pairs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (n, 1, S, S) in [-1, 1], mask uint8 (n, 1, S, S) with one disk each)."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1.0, 1.0, (n, 1, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    centre = rng.uniform(0.3 * size, 0.7 * size, (n, 2))
    radius = rng.uniform(0.03 * size, 0.1 * size, n)
    dist2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    mask = (dist2 < radius[:, None, None] ** 2).astype(np.uint8)[:, None]
    return image, mask


def configured(args: argparse.Namespace, device: torch.device) -> SegmentParams:
    """``segment`` of ``--params`` with the command line's batch, threads, device, switches."""
    params = load_section(args.params, "segment")
    # Only the training function runs: the grid's conditions do not matter, and a pretrain
    # condition would refuse the few steps of a warm-up run (both phases need one).
    over = {"batch_size": args.batch_size, "threads": args.threads, "device": device.type,
            "conditions": ["real"]}  # fmt: skip
    return with_overrides(params, {**over, **{k: getattr(args, k) for k in SWITCHES}})


def time_run(params: SegmentParams, size: int, augment: str, seed: int, warmup: int,
             steps: int, before: bool = False, barrier=None) -> dict:  # fmt: skip
    """Warm-up run, then (after ``barrier``, when given) the timed run: its figures.

    ``before``: on the code path before the switches (``code_path``)."""
    with code_path(before):
        return _time_run(params, size, augment, seed, warmup, steps, barrier)


def _time_run(params, size, augment, seed, warmup, steps, barrier) -> dict:
    device = resolve_device(params.device)
    image, mask = random_pairs(4 * params.batch_size, size, seed)
    flags = np.full(len(image), augment == "all")
    start = time.perf_counter()
    if warmup:
        train.train_segmenter(image, mask, flags, with_overrides(params, {"steps": warmup}), 0)
    warm = time.perf_counter() - start
    common.release(device)
    common.peak_memory_reset(device)
    if barrier is not None:
        barrier.wait()
    window = common.Window(device)
    window.begin()
    timed = with_overrides(params, {"steps": steps})
    result = train.train_segmenter(image, mask, flags, timed, seed)
    window.end()
    return {
        "img_s": steps * params.batch_size / result.seconds,
        "ms_step": 1e3 * result.seconds / steps,
        "warmup_s": warm if warmup else None,
        "peak_mb": common.peak_memory_mb(device),
        "gpu_util_pct": window.gpu_util,
    }


def measure(params: SegmentParams, size: int, augment: str, args, warmup: int,
            before: bool = False) -> dict:  # fmt: skip
    """``time_run`` in this process, or in ``--workers`` processes at once (rates summed)."""
    job = (params, size, augment, args.seed, warmup, args.steps, before)
    if args.workers == 1:
        return time_run(*job)
    ctx = multiprocessing.get_context("spawn")  # a forked torch thread pool can deadlock
    with ctx.Manager() as manager, ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        barrier = manager.Barrier(args.workers)
        runs = [f.result() for f in [pool.submit(time_run, *job, barrier)
                                     for _ in range(args.workers)]]  # fmt: skip
    return {
        "img_s": sum(r["img_s"] for r in runs),
        "ms_step": float(np.mean([r["ms_step"] for r in runs])),
        "warmup_s": max(r["warmup_s"] or 0.0 for r in runs) if warmup else None,
        "peak_mb": None,
        "gpu_util_pct": None,
    }


def best_of(params: SegmentParams, size: int, augment: str, args) -> dict:
    """The fastest of ``--repeats`` measurements, before and after alternating with
    ``--compare`` (so both meet the same interference), each configuration warmed up once."""
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(args.repeats):
        warmup = args.warmup if r == 0 else 0
        for before in (True, False) if args.compare else (False,):
            cfg = with_overrides(params, BEFORE) if before else params
            runs[before].append(measure(cfg, size, augment, args, warmup, before))
    fastest = {k: max(v, key=lambda m: m["img_s"]) for k, v in runs.items() if v}
    for k, v in fastest.items():
        fastest[k] = {**v, "warmup_s": runs[k][0]["warmup_s"]}  # the first run warmed up
    return fastest


def row(size: int, augment: str, params: SegmentParams, args) -> dict:
    """Every figure of one (size, augmentation) row: one configuration, or before/after."""
    out = {
        "size": size,
        "augment": augment,
        "unet": "-".join(map(str, params.unet.channels)),
        "res_units": params.unet.num_res_units,
        "batch": params.batch_size,
        "threads": params.threads or torch.get_num_threads(),
        "workers": args.workers,
        "switches": switches_label(params),
    }
    fastest = best_of(params, size, augment, args)
    after = fastest[False]
    if not args.compare:
        return {**out, **after}
    return {
        **out,
        "before_img_s": fastest[True]["img_s"],
        "after_img_s": after["img_s"],
        "ratio": after["img_s"] / fastest[True]["img_s"],
        "warmup_s": after["warmup_s"],
        "peak_mb": after["peak_mb"],
        "gpu_util_pct": after["gpu_util_pct"],
    }


def switches_label(params: SegmentParams) -> str:
    """The switches as set, e.g. ``batched, CL, compile, bf16`` (``monai`` alone: the baseline)."""
    parts = [params.augment_backend]
    parts += ["CL"] * params.channels_last + ["compile"] * params.compile
    return ", ".join(parts + ([params.precision] if params.precision != "auto" else []))


COLUMNS = [
    ("px", "size", "d"),
    ("augment", "augment", "s"),
    ("UNet channels", "unet", "s"),
    ("res units", "res_units", "d"),
    ("batch", "batch", "d"),
    ("workers x threads", "layout", "s"),
    ("switches", "switches", "s"),
    ("img/s", "img_s", ".1f"),
    ("ms/step", "ms_step", ".1f"),
    ("before img/s", "before_img_s", ".1f"),
    ("after img/s", "after_img_s", ".1f"),
    ("after/before", "ratio", ".2f"),
    ("warm-up s", "warmup_s", ".1f"),
    ("peak MiB", "peak_mb", ".0f"),
    ("GPU util %", "gpu_util_pct", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="pixels")
    parser.add_argument(
        "--augment",
        nargs="+",
        choices=("none", "all"),
        default=["none", "all"],
        help="none: the real condition; all: real+classical (default: both)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="steps of an untimed first run")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--batch-size", type=int, help="default: segment.batch_size")
    parser.add_argument("--workers", type=int, default=1, help="measuring processes at once")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the fastest counts")
    common.add_switch_options(parser, "augment-backend", "channels-last", "compile", "precision")
    common.add_device_options(parser, "auto", "torch CPU threads (default: segment.threads)")
    args = parser.parse_args(argv)
    common.check_steps(parser, args)
    if args.workers < 1 or args.repeats < 1:
        parser.error(f"need --workers, --repeats >= 1, got {args.workers}, {args.repeats}")
    device = resolve_device(args.device)  # --threads goes to train_segmenter, as in the stage
    params = configured(args, device)
    rows = []
    for size in args.sizes:
        for augment in args.augment:
            print(f"{size}x{size} augment={augment} ...", file=sys.stderr, flush=True)
            r = row(size, augment, params, args)
            rows.append({**r, "layout": f"{r['workers']} x {r['threads']}"})
    meta = {
        **common.environment(device, params.threads or torch.get_num_threads()),
        "warmup": args.warmup,
        "steps": args.steps,
        "workers": args.workers,
        "repeats": args.repeats,
        "compare": args.compare,
    }
    print(
        f"Segmentation training throughput on {meta['device']} (torch {meta['torch']}): "
        f"{args.warmup} warm-up + {args.steps} timed steps per row, fastest of {args.repeats}"
        + (", before = " + switches_label(with_overrides(params, BEFORE)) if args.compare else "")
    )
    common.publish(rows, COLUMNS, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
