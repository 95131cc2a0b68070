"""Where a training step's time goes, per network: ``torch.profiler`` self times by kind of op.

    python benchmarks/profile_step.py [--models gvae vae] [--size 128] [--batch-size 0]
        [--warmup 1] [--steps 1] [--threads N] [--sample] [--json FILE]

For each model (default ``ct.models``), built as for a CT run (2 channels, the ``ct``
overrides, ``train.channels_last`` as set), the minimal training loop of
``benchmarks/train_throughput.py`` (``HandLoop``: the trainer's algorithm, nothing around it) runs
``--warmup`` steps, then ``--steps`` steps under ``torch.profiler``. Every ATen operator's *self*
time (on the calling thread: an operator's intra-op threads finish inside it) is put in one
bucket: convolution forward, convolution backward (weights and inputs; the gradient penalty's
double backward included), normalisation, activations, dropout's random masks, pooling and
resampling, the optimizer (Adam's ``_foreach`` kernels), memory (copies, fills, allocation),
other element-wise arithmetic and reductions, and the rest. "Python and dispatch" is the wall
time of the steps minus the operators' self times: interpreter, autograd bookkeeping, dispatch.
``--sample`` profiles ``model.sample(batch)`` (generation) instead of a training step.
Prints one markdown table (ms per step and % of the step per bucket and network).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from benchmarks.train_throughput import HandLoop, random_images  # noqa: E402
from models.registry import build_model  # noqa: E402
from pipeline.params.loader import load_section  # noqa: E402
from pipeline.params.models import load_model_config  # noqa: E402

# Bucket of an ATen operator, by the first matching name fragment (order matters).
BUCKETS = [
    ("conv bwd", ("convolution_backward",)),
    ("conv fwd", ("convolution", "conv2d", "mkldnn_conv")),
    ("norm", ("batch_norm", "group_norm", "layer_norm", "instance_norm")),
    ("activation", ("leaky_relu", "relu", "silu", "tanh", "sigmoid", "gelu", "softplus")),
    ("dropout RNG", ("bernoulli", "dropout", "rand", "normal_")),
    ("pool/resample", ("pool", "upsample", "interpolate", "grid_sampler")),
    ("optimizer", ("_foreach", "addcdiv", "addcmul", "lerp")),
    (
        "memory",
        (
            "copy_",
            "fill_",
            "zero_",
            "empty",
            "clone",
            "contiguous",
            "cat",
            "stack",
            "index",
            "_to_copy",
            "resize",
            "as_strided",
            "set_",
        ),
    ),  # fmt: skip
    (
        "elementwise",
        (
            "mul",
            "add",
            "sub",
            "div",
            "pow",
            "sqrt",
            "sum",
            "mean",
            "exp",
            "log",
            "neg",
            "abs",
            "clamp",
            "where",
            "norm",
            "max",
            "min",
            "var",
            "rsqrt",
            "threshold",
            "sign",
            "mse",
            "binary_cross",
            "lt",
            "gt",
            "eq",
        ),
    ),  # fmt: skip
]
ORDER = [b for b, _ in BUCKETS] + ["other ops", "Python and dispatch"]


def bucket(op: str) -> str:
    """The bucket of ATen operator ``op`` (e.g. ``aten::convolution_backward``)."""
    name = op.removeprefix("aten::")
    for label, fragments in BUCKETS:
        if any(f in name for f in fragments):
            return label
    return "other ops"


def breakdown(run, steps: int) -> tuple[dict[str, float], float]:
    """(ms per step by bucket, wall ms per step) of ``steps`` calls of ``run`` profiled."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        wall = (time.perf_counter() - t0) * 1e3 / steps
    ms = dict.fromkeys(ORDER, 0.0)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            ms[bucket(event.key)] += event.self_cpu_time_total / 1e3 / steps
    ms["Python and dispatch"] = max(wall - sum(ms.values()), 0.0)
    return ms, wall


def measure(name: str, args) -> dict:
    model_cfg, cfg = load_model_config(args.params, name, ct=True)
    if args.batch_size:
        cfg = cfg.model_copy(update={"batch_size": args.batch_size})
    torch.manual_seed(args.seed)
    model = build_model(name, model_cfg, 2, args.size)
    if args.sample:
        model.eval()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        cond = random_images(cfg.batch_size, 2, args.size, args.seed) if model.conditional else None
        kwargs = {} if cond is None else {"condition": cond}

        def run():
            with torch.no_grad():
                model.sample(cfg.batch_size, **kwargs)

    else:
        data = random_images(4 * cfg.batch_size, 2, args.size, args.seed)
        loop = HandLoop(model, data, cfg, torch.device("cpu"), bf16=False,
                        channels_last=cfg.channels_last)  # fmt: skip
        run = loop.step
    for _ in range(args.warmup):
        run()
    ms, wall = breakdown(run, args.steps)
    row = {"model": name, "px": args.size, "batch": cfg.batch_size, "step_ms": wall}
    for label in ORDER:
        row[label] = ms[label]
        row[f"{label} %"] = 100 * ms[label] / wall
    return row


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("--models", nargs="+", help="registry names (default: ct.models)")
    parser.add_argument("--size", type=int, default=128, help="pixels (default 128)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: ct.train.batch_size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--sample", action="store_true", help="profile generation instead")
    common.add_device_options(parser, "cpu")
    args = parser.parse_args(argv)
    if common.device_of(args).type != "cpu":
        parser.error("the profile buckets are CPU operator times: --device cpu")
    names = args.models or list(load_section(args.params, "ct").models)
    rows = []
    for name in names:
        print(f"{name} {args.size} px ...", file=sys.stderr, flush=True)
        rows.append(measure(name, args))
    columns = [("model", "model", "s"), ("px", "px", "d"), ("batch", "batch", "d"),
               ("ms/step", "step_ms", ".0f")]  # fmt: skip
    columns += [(f"{label} %", f"{label} %", ".1f") for label in ORDER]
    meta = {**common.environment(torch.device("cpu"), torch.get_num_threads()),
            "what": "sample" if args.sample else "train step"}  # fmt: skip
    print(
        f"Profile of one {meta['what']} on cpu ({meta['threads']} threads, torch {meta['torch']})"
    )
    common.publish(rows, columns, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
