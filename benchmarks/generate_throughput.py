"""Synthetic-pair generation throughput (slices/s) of ``gvae generate``'s core, per model.

    python benchmarks/generate_throughput.py [--models gvae vae] [--sizes 64] [--n N]
        [--threads N] [--device cpu] [--json FILE]

For each model a freshly built, untrained CT network (2 channels: image + mask, the
``models.<name>`` config with the ``ct`` overrides of ``params.yaml``) runs
``pipeline.augment.generate.generate_pairs``, the very function of the stage: seeded sampling
in ``generate.batch_size`` batches, mask thresholding, mask classification (empty / tiny /
fragmented / ok) and the keep policy, until ``--n`` pairs are kept or ``max_draw_factor * n``
are drawn. An untrained generator draws masks of other kinds than a trained one, so the
drawn-per-kept ratio is not the pipeline's; the per-slice costs are. Printed: slices drawn and
kept per second, and the two parts alone on the same number of slices: the network
(``model.sample``) and the mask classification. The stage samples on the CPU (its checkpoint
loads there), hence ``--device cpu`` by default. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from models.registry import build_model  # noqa: E402
from pipeline.augment.generate import (  # noqa: E402
    classify,
    condition_batch,
    generate_pairs,
    split_pair,
)
from pipeline.augment.masks import MaskSet  # noqa: E402
from pipeline.params.loader import load_section, with_overrides  # noqa: E402
from pipeline.params.models import load_model_config  # noqa: E402


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(wall seconds, result) of ``fn()``, CUDA work included."""
    common.sync(device)
    start = time.perf_counter()
    out = fn()
    common.sync(device)
    return time.perf_counter() - start, out


def disk_masks(n: int, size: int, seed: int) -> MaskSet:
    """``n`` conditions for a mask-conditioned model: a disk of random centre and radius per
    mask on a random image (a step's cost does not depend on content)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centre = rng.uniform(0.3 * size, 0.7 * size, (n, 2))
    radius = rng.uniform(0.04 * size, 0.12 * size, n)
    inside = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2 < radius[
        :, None, None
    ] ** 2
    image = rng.uniform(-1, 1, (n, 1, size, size)).astype(np.float32)
    return MaskSet(image, inside[:, None].astype(np.uint8), np.arange(n), {})


def measure(name: str, size: int, args, device: torch.device) -> dict:
    """Every figure of one (model, size) row."""
    model_cfg, _ = load_model_config(args.params, name, ct=True)
    params = load_section(args.params, "generate")
    params = with_overrides(
        params, {"batch_size": args.batch_size, "channels_last": args.channels_last}
    )
    pixel_mm = load_section(args.params, "slices").fov_mm / size
    torch.manual_seed(args.seed)
    model = build_model(name, model_cfg, channels=2, size=size).to(device).eval()
    if params.channels_last:
        model.to(memory_format=torch.channels_last)
    # Warm-up at the batch shape of the run: oneDNN builds its kernels per shape, and a smaller
    # warm-up batch left that cost inside the first timed call (half of it at 128 px).
    masks = disk_masks(args.n, size, args.seed) if model.conditional else None
    warm = min(params.batch_size, args.n)
    model.sample(warm, **({} if masks is None else {"condition": condition_batch(
        masks, np.arange(args.n), 0, warm)}))  # fmt: skip
    window = common.Window(device)
    window.begin()
    got = generate_pairs(model, args.n, pixel_mm, params, args.seed, masks)
    window.end()

    # The two parts alone, on as many slices as the full run drew.
    gen = torch.Generator().manual_seed(args.seed)
    step = params.batch_size
    batches = [min(step, got.drawn - lo) for lo in range(0, got.drawn, step)]
    order = np.arange(got.drawn)

    def draw(lo: int, b: int) -> torch.Tensor:
        if masks is None:
            return model.sample(b, generator=gen)
        return model.sample(b, generator=gen, condition=condition_batch(masks, order, lo, b))

    net_s, samples = timed(
        lambda: [draw(i * step, b).float().cpu().numpy() for i, b in enumerate(batches)], device
    )
    masks = [split_pair(s, params.mask_threshold)[1] for s in samples]
    cls_s, _ = timed(lambda: [classify(m, pixel_mm, params) for m in masks], device)
    return {
        "model": name,
        "size": size,
        "n": args.n,
        "drawn": got.drawn,
        "kept": len(got.image),
        "drawn_s": got.drawn / window.seconds,
        "kept_s": len(got.image) / window.seconds,
        "net_s": got.drawn / net_s,
        "classify_s": got.drawn / cls_s,
        "kinds": " ".join(f"{k}:{v}" for k, v in got.counts.items()),
        "gpu_util_pct": window.gpu_util,
    }


def compare(name: str, size: int, args, device: torch.device) -> dict:
    """One ``--compare`` row: ``generate_pairs`` with today's NCHW sampling, then with the
    switches (``generate.channels_last``, or ``--channels-last``/``--no-channels-last``)."""
    row = {"model": name, "size": size, "n": args.n}
    for tag, layout in (("before", False), ("after", args.channels_last)):
        got = measure(name, size, argparse.Namespace(**{**vars(args), "channels_last": layout}),
                      device)  # fmt: skip
        row[tag] = "NHWC" if layout else "NCHW"
        row[f"{tag}_drawn_s"] = got["drawn_s"]
        row[f"{tag}_net_s"] = got["net_s"]
        row["drawn"] = got["drawn"]
    row["speedup"] = row["after_drawn_s"] / row["before_drawn_s"]
    return row


COMPARE_COLUMNS = [
    ("model", "model", "s"),
    ("px", "size", "d"),
    ("n", "n", "d"),
    ("drawn", "drawn", "d"),
    ("before", "before", "s"),
    ("after", "after", "s"),
    ("before drawn slices/s", "before_drawn_s", ".1f"),
    ("after drawn slices/s", "after_drawn_s", ".1f"),
    ("after/before", "speedup", ".2f"),
    ("before network only", "before_net_s", ".1f"),
    ("after network only", "after_net_s", ".1f"),
]


COLUMNS = [
    ("model", "model", "s"),
    ("px", "size", "d"),
    ("n", "n", "d"),
    ("drawn", "drawn", "d"),
    ("kept", "kept", "d"),
    ("drawn slices/s", "drawn_s", ".1f"),
    ("kept slices/s", "kept_s", ".1f"),
    ("network only slices/s", "net_s", ".1f"),
    ("classify only slices/s", "classify_s", ".1f"),
    ("drawn by kind", "kinds", "s"),
    ("GPU util %", "gpu_util_pct", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("--models", nargs="+", help="registry names (default: ct.models)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64], help="pixels (default 64)")
    parser.add_argument("--n", type=int, help="pairs to keep (default: generate.n)")
    parser.add_argument("--batch-size", type=int, help="default: generate.batch_size")
    common.add_switch_options(parser, "channels-last")  # generate.channels_last
    common.add_device_options(parser, "cpu")
    args = parser.parse_args(argv)
    if args.channels_last is None:
        args.channels_last = load_section(args.params, "generate").channels_last
    if args.n is None:
        args.n = load_section(args.params, "generate").n
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    device = common.device_of(args)
    names = args.models or list(load_section(args.params, "ct").models)
    rows = []
    for size in args.sizes:
        for name in names:
            print(f"{name} {size}x{size} ...", file=sys.stderr, flush=True)
            rows.append((compare if args.compare else measure)(name, size, args, device))
    meta = {**common.environment(device, torch.get_num_threads()), "n": args.n}
    print(
        f"Generation throughput on {meta['device']} ({meta['threads']} threads, torch "
        f"{meta['torch']}), untrained networks, seed {args.seed}"
    )
    common.publish(rows, COMPARE_COLUMNS if args.compare else COLUMNS, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
