"""Segmentation training throughput (images/s) of ``gvae segment``'s training function.

    python benchmarks/segment_throughput.py [--sizes 64 128] [--augment none all]
        [--warmup 1] [--steps 10] [--batch-size N] [--threads N] [--device auto] [--json FILE]

Runs ``pipeline.augment.segment.train.train_segmenter`` itself, the function every run of the
segmentation grid calls: MONAI's 2D UNet as configured in ``params.yaml`` (``segment.unet``,
profile applied), ``DiceCELoss(sigmoid=True, batch=True)``, Adam, bf16 autocast on CUDA, and
per-sample classical augmentation (MONAI, on the CPU) for the flagged samples. ``--augment
none`` is the ``real`` condition (no sample augmented), ``all`` the ``real+classical`` one
(every sample drawn through the augmentation). Data are random images in [-1, 1] with one disk
per mask: the cost of a step does not depend on the content. A warm-up run of ``--warmup``
steps comes first; the timed run's clock is the function's own (the training loop, after the
network is built). ``--threads`` defaults to ``segment.threads``, as in the stage. On CUDA
also peak memory and mean GPU utilisation. Prints a markdown table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from models.train.trainer import resolve_device  # noqa: E402
from pipeline.augment.segment.train import train_segmenter  # noqa: E402
from pipeline.params.loader import load_section, with_overrides  # noqa: E402


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


def measure(size: int, augment: str, args, device: torch.device) -> dict:
    """Every figure of one (size, augmentation) row."""
    params = load_section(args.params, "segment")
    over = {"batch_size": args.batch_size, "threads": args.threads, "device": device.type}
    params = with_overrides(params, over)
    image, mask = random_pairs(4 * params.batch_size, size, args.seed)
    flags = np.full(len(image), augment == "all")
    if args.warmup:
        train_segmenter(image, mask, flags, with_overrides(params, {"steps": args.warmup}), 0)
    common.release(device)
    common.peak_memory_reset(device)
    timed = with_overrides(params, {"steps": args.steps})
    window = common.Window(device)
    window.begin()
    result = train_segmenter(image, mask, flags, timed, args.seed)
    window.end()
    return {
        "size": size,
        "augment": augment,
        "unet": "-".join(map(str, params.unet.channels)),
        "res_units": params.unet.num_res_units,
        "batch": params.batch_size,
        "threads": torch.get_num_threads(),
        "img_s": args.steps * params.batch_size / result.seconds,
        "ms_step": 1e3 * result.seconds / args.steps,
        "peak_mb": common.peak_memory_mb(device),
        "gpu_util_pct": window.gpu_util,
    }


COLUMNS = [
    ("px", "size", "d"),
    ("augment", "augment", "s"),
    ("UNet channels", "unet", "s"),
    ("res units", "res_units", "d"),
    ("batch", "batch", "d"),
    ("threads", "threads", "d"),
    ("img/s", "img_s", ".1f"),
    ("ms/step", "ms_step", ".1f"),
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
    common.add_device_options(parser, "auto", "torch CPU threads (default: segment.threads)")
    args = parser.parse_args(argv)
    common.check_steps(parser, args)
    device = resolve_device(args.device)  # --threads goes to train_segmenter, as in the stage
    rows = []
    for size in args.sizes:
        for augment in args.augment:
            print(f"{size}x{size} augment={augment} ...", file=sys.stderr, flush=True)
            rows.append(measure(size, augment, args, device))
    meta = {
        **common.environment(device, torch.get_num_threads()),
        "warmup": args.warmup,
        "steps": args.steps,
    }
    print(
        f"Segmentation training throughput on {meta['device']} (torch {meta['torch']}): "
        f"{args.warmup} warm-up + {args.steps} timed steps per row"
    )
    common.publish(rows, COLUMNS, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
