"""Where a segmentation training step spends its time: a ``torch.profiler`` breakdown.

    python benchmarks/segment_profile.py [--size 128] [--augment none|all] [--warmup 3]
        [--steps 10] [--threads N] [--augment-backend ...] [--channels-last] [--compile]
        [--precision ...] [--json FILE]

Runs ``train_phases``' step from the same parts (``build_network``, ``resolve_precision``,
``classical_augmentation``, ``augment_batch``, ``DiceCELoss``, Adam), each part inside a
``record_function`` range: batch assembly (index the epoch's samples), augmentation (numpy ->
float32 tensors, and the classical augmentation of the flagged samples), forward, loss,
backward, optimizer. Forward and backward are split further by the self time of the ATen ops
they run: convolutions (incl. transposed, weight and input gradients), InstanceNorm (ATen's
``native_batch_norm`` and its backward), PReLU, the rest (adds, concatenations, copies,
autograd bookkeeping, Python). With MONAI's augmentation every transform of its ``Compose`` is
a range of its own; the rest of the augmentation part is the numpy -> tensor conversion, the
``Compose`` itself, and (``batched``) the whole batched augmentation. The profiler slows a
step down; the table gives each part's share of the profiled steps and those shares of the
step time measured without the profiler (``ms/step``). ``--before`` profiles the step before
the speed switches (as ``segment_throughput.py --compare``'s *before*).
Data are ``segment_throughput.random_pairs``; params as in ``segment_throughput.py``.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from benchmarks.segment_throughput import (  # noqa: E402
    BEFORE,
    code_path,
    configured,
    random_pairs,
)
from models.train.speed import autocast, resolve_precision  # noqa: E402
from models.train.trainer import resolve_device  # noqa: E402
from pipeline.augment.segment.train import (  # noqa: E402
    augment_batch,
    batch_indices,
    build_network,
    build_optimizer,
    classical_augmentation,
)
from pipeline.params.loader import with_overrides  # noqa: E402

PARTS = ("batch", "augment", "forward", "loss", "backward", "optimizer")


class Labelled:
    """A MONAI transform run inside a profiler range named after its class."""

    def __init__(self, transform) -> None:
        self.transform, self.name = transform, f"augment: {type(transform).__name__}"

    def __call__(self, data):
        with record_function(self.name):
            return self.transform(data)


def op_kind(name: str) -> str:
    """The category of an ATen op for the forward/backward split."""
    if "conv" in name:
        return "conv"
    if "batch_norm" in name or "instance_norm" in name:
        return "InstanceNorm"
    return "PReLU" if "prelu" in name else "other"


def stepper(params, size: int, augment: bool, seed: int):
    """A function running one training step of ``train_phases`` with labelled parts."""
    device = torch.device(params.device)
    torch.set_num_threads(params.threads or torch.get_num_threads())
    torch.manual_seed(seed)
    model, forward = build_network(params, device)
    opt = build_optimizer(model, params)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    pipe = classical_augmentation(params.augment, seed, params.augment_backend)
    if hasattr(pipe, "transforms"):  # MONAI's Compose: one range per transform
        pipe.transforms = [Labelled(t) for t in pipe.transforms]
    image, mask = random_pairs(4 * params.batch_size, size, seed)
    flags, batches = np.full(len(image), augment), batch_indices(len(image), params.batch_size, 0)
    amp = autocast(resolve_precision(params.precision, device, "segment.precision"), device)
    layout = torch.channels_last if params.channels_last else torch.contiguous_format

    def step() -> None:
        with record_function("batch"):
            idx = next(batches)
            img_np, msk_np = image[idx], mask[idx]
        with record_function("augment"):
            img, msk = augment_batch(pipe, img_np, msk_np, flags[idx], device)
        with record_function("forward"):
            with amp():
                logits = forward(img.contiguous(memory_format=layout))
        with record_function("loss"):
            loss = loss_fn(logits.float(), msk)
        with record_function("backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            opt.step()

    return step


def breakdown(events, steps: int) -> dict[str, float]:
    """Profiled ms per step of every part, of the per-op kinds inside forward and backward,
    and of every labelled augmentation transform."""
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name in PARTS or e.name.startswith("augment: "):
            out[e.name] += e.cpu_time_total / 1e3 / steps
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name not in ("forward", "backward"):
            parent = parent.cpu_parent
        if parent is not None and e.name.startswith("aten::"):
            out[f"{parent.name}: {op_kind(e.name)}"] += e.self_cpu_time_total / 1e3 / steps
    for part in ("forward", "backward"):
        ops = sum(v for k, v in out.items() if k.startswith(f"{part}: "))
        out[f"{part}: other"] += out[part] - ops  # what no ATen op accounts for
    labelled = sum(v for k, v in out.items() if k.startswith("augment: "))
    out["augment: rest (numpy -> tensors, batched)"] = out["augment"] - labelled
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--augment", choices=("none", "all"), default="all")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, help="default: segment.batch_size")
    parser.add_argument(
        "--before", action="store_true", help="the step before the switches (as --compare's)"
    )
    common.add_switch_options(
        parser, "augment-backend", "channels-last", "compile", "precision", compare=False
    )
    common.add_device_options(parser, "cpu", "torch CPU threads (default: segment.threads)")
    args = parser.parse_args(argv)
    common.check_steps(parser, args)
    params = configured(args, resolve_device(args.device))
    if args.before:
        params = with_overrides(params, BEFORE)
    with code_path(args.before):
        step = stepper(params, args.size, args.augment == "all", args.seed)
    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    ms_step = 1e3 * (time.perf_counter() - start) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    parts = breakdown(prof.events(), args.steps)
    total = sum(parts[p] for p in PARTS)
    order = [p for name in PARTS for p in [name, *sorted(k for k in parts if k.startswith(
        f"{name}: "))]]  # fmt: skip
    rows = [{"part": ("" if p in PARTS else "- ") + p, "share": 100 * parts[p] / total,
             "ms": ms_step * parts[p] / total} for p in order]  # fmt: skip
    print(f"{args.size} px, augment {args.augment}, {params.batch_size} per batch, "
          f"{params.threads} threads, switches {params.augment_backend}, channels_last "
          f"{params.channels_last}, compile {params.compile}, precision {params.precision}: "
          f"{ms_step:.1f} ms/step without the profiler")  # fmt: skip
    columns = [("part", "part", "s"), ("ms/step", "ms", ".1f"), ("%", "share", ".1f")]
    meta = {**common.environment(torch.device("cpu"), params.threads), "ms_step": ms_step}
    common.publish(rows, columns, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
