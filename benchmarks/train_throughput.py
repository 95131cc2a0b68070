"""Training throughput (images/s) of each model: the one trainer next to a hand-written loop.

    python benchmarks/train_throughput.py [--models vae gvae] [--geometries 32x1 64x2 128x2]
        [--warmup 1] [--steps 2] [--batch-size 8] [--threads N] [--device auto]
        [--peak-tflops 989] [--json FILE]

Per model and geometry (SIZExCHANNELS: 1 channel = MNIST-like with the ``models.<name>``
config, 2 channels = CT image + mask with the ``ct`` overrides; random data, nothing is
downloaded) the same network, built from ``params.yaml`` with the same seed, is trained twice
in one run: through ``models.train.trainer.train`` and through a minimal PyTorch loop that calls the
model's own ``critic_loss``/``losses`` with the trainer's optimizer and nothing else (no loss
logging, finiteness checks, checkpoints or sample grids). Warm-up steps are excluded; the
printed ratio trainer/hand is the trainer's overhead. FLOPs per step come from
``torch.utils.flop_counter.FlopCounterMode``. On CUDA also: peak memory, bf16 autocast +
channels_last vs fp32 eager (NCHW) of the hand loop, mean GPU utilisation and the trainer's
model FLOPs utilisation (MFU) against ``--peak-tflops``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models.train.trainer as trainer_module  # noqa: E402
from benchmarks import common  # noqa: E402
from models.registry import build_model  # noqa: E402
from models.train import speed  # noqa: E402
from models.train.optim import make_optimizer  # noqa: E402
from models.train.trainer import resolve_device, train  # noqa: E402
from pipeline.params.loader import with_overrides  # noqa: E402
from pipeline.params.models import load_model_config, load_params_models  # noqa: E402


def geometry(text: str) -> tuple[int, int]:
    """``"64x2"`` -> (size 64, channels 2); channels 1 (MNIST-like) or 2 (CT image + mask)."""
    try:
        size, channels = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SIZExCHANNELS, e.g. 64x2") from None
    if channels not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: channels must be 1 (MNIST) or 2 (CT)")
    return size, channels


def random_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """(n, channels, size, size) float32 in [-1, 1]; channel 1, if any, a binary +-1 mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g) * 2 - 1
    if channels == 2:  # the CT pairs' mask channel holds only -1 and 1
        x[:, 1] = torch.where(x[:, 1] > 0.9, 1.0, -1.0)
    return x


class HandLoop:
    """The trainer's algorithm with nothing around it: n_critic critic updates, then one
    encoder/generator update, each ``zero_grad``/``backward``/``step`` on ``loss["total"]``.

    Same optimizers (``make_optimizer``: ``torch.optim.Adam`` for every compared model), same
    critic freezing during the generator update (it is part of the algorithm's cost), same
    gradient clipping when configured. No CPU-GPU synchronisation inside a step.
    """

    def __init__(self, model, data, cfg, device, bf16: bool, channels_last: bool) -> None:
        self.model = model.to(device).train()
        self.data = data.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.data = self.data.contiguous(memory_format=torch.channels_last)
        self.device, self.batch_size, self.clip = device, cfg.batch_size, cfg.grad_clip
        self.gen_params = list(model.generator_parameters())
        self.critic_params = list(model.critic_parameters())
        self.gen_opt = make_optimizer(cfg.optimizer, self.gen_params, cfg.lr, cfg.adam_betas)
        self.critic_opt = None
        if model.has_critic:
            lr, betas = cfg.critic_lr or cfg.lr, cfg.critic_betas or cfg.adam_betas
            self.critic_opt = make_optimizer(cfg.optimizer, self.critic_params, lr, betas)
        self.bf16 = bf16
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _batch(self) -> torch.Tensor:
        idx = torch.randint(len(self.data), (self.batch_size,), generator=self.gen)
        return self.data[idx.to(self.device)]

    def _update(self, loss_fn, opt, params) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = loss_fn(self._batch())["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        opt.step()

    def step(self) -> None:
        """One training step (critic updates, then the encoder/generator update)."""
        m = self.model
        for _ in range(m.n_critic if m.has_critic else 0):
            self._update(m.critic_loss, self.critic_opt, self.critic_params)
            m.after_critic_step()
        for p in self.critic_params:
            p.requires_grad_(False)
        self._update(m.losses, self.gen_opt, self.gen_params)
        m.after_generator_step()
        for p in self.critic_params:
            p.requires_grad_(True)

    def timed(self, warmup: int, steps: int) -> common.Window:
        """Run ``warmup`` untimed then ``steps`` timed steps; return the timed window."""
        for _ in range(warmup):
            self.step()
        window = common.Window(self.device)
        window.begin()
        for _ in range(steps):
            self.step()
        window.end()
        return window


def clocked_tqdm(window: common.Window, begin_at: int, end_at: int, done: list[float]) -> type:
    """A ``tqdm`` whose iterator opens ``window`` at step index ``begin_at``, closes it at
    ``end_at`` and appends the stamps of the loop's start and exhaustion to ``done``.

    Patched into the trainer, it times the trainer's own loop between two step boundaries,
    without touching its code. The last step (index ``end_at``) carries the final checkpoint
    and sample grid; it lies outside the window and is reported as ``save_ms``.
    """

    class ClockedTqdm(tqdm):
        def __iter__(self):
            done.append(time.perf_counter())
            for i, item in enumerate(super().__iter__()):
                if i == begin_at:
                    window.begin()
                elif i == end_at:
                    window.end()
                yield item
            common.sync(window.device)
            done.append(time.perf_counter())

    return ClockedTqdm


def trainer_run(model, data, cfg, warmup: int, steps: int) -> dict[str, Any]:
    """Time ``steps`` steps of ``models.train.trainer.train`` after ``warmup`` steps.

    The run has ``warmup + steps + 1`` steps with the checkpoint and the sample grid only at
    the end (outside the window). Returns the window, the trainer's summary and ``save_s``.
    """
    window, done = common.Window(resolve_device(cfg.device)), []
    total = warmup + steps + 1
    cfg = with_overrides(cfg, {"steps": total, "checkpoint_every": total, "sample_every": total})
    clock = clocked_tqdm(window, warmup, warmup + steps, done)
    with tempfile.TemporaryDirectory() as out, mock.patch.object(trainer_module, "tqdm", clock):
        summary = train(model, data, cfg, Path(out), progress=False)
    step_s = window.seconds / steps
    return {
        "window": window,
        "summary": summary,
        "save_s": done[1] - window.ended_at - step_s,
        "warmup_s": window.began_at - done[0],  # the warm-up steps (a compiler's work is here)
    }


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP counts as "Global".

    The tracker's per-module backward hooks make ``torch.autograd.grad`` fail ("A leaf node was
    passed to _will_engine_execute_node"), and the WGAN-GP penalty calls it inside the step.
    """

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def flops_per_step(loop: HandLoop) -> int | None:
    """FLOPs of one training step (forward, backward, penalty double-backward) by op count.

    None (with a note on stderr) where this torch's ``FlopCounterMode`` cannot count the step.
    """
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    try:
        with counter:
            loop.step()
    except Exception as exc:  # noqa: BLE001 - a missing figure, not a failed benchmark
        print(f"FLOP count failed: {exc}", file=sys.stderr)
        return None
    return counter.get_total_flops()


def measure(name: str, size: int, channels: int, args, device: torch.device) -> dict[str, Any]:
    """Every figure of one (model, geometry) row."""
    model_cfg, cfg = load_model_config(args.params, name, ct=channels == 2)
    over = {"device": device.type, "seed": args.seed, "batch_size": args.batch_size or None}
    cfg = with_overrides(cfg, over)
    data = random_images(4 * cfg.batch_size, channels, size, args.seed)
    cuda = device.type == "cuda"

    def fresh():
        torch.manual_seed(args.seed)  # the same initial weights for every run
        return build_model(name, model_cfg, channels, size)

    model = fresh()
    per_step = model.n_critic + 1 if model.has_critic else 1
    images = args.steps * per_step * cfg.batch_size
    t = trainer_run(model, data, cfg, args.warmup, args.steps)
    del model
    common.release(device)

    common.peak_memory_reset(device)
    hand = HandLoop(fresh(), data, cfg, device, bf16=cuda, channels_last=cfg.channels_last)
    h = hand.timed(args.warmup, args.steps)
    hand_peak = common.peak_memory_mb(device)
    flops = flops_per_step(hand)
    del hand
    common.release(device)

    fp32_ratio = None
    if cuda:  # the same loop in fp32, NCHW: what bf16 autocast + channels_last buys
        fp32 = HandLoop(fresh(), data, cfg, device, bf16=False, channels_last=False)
        fp32_ratio = fp32.timed(args.warmup, args.steps).seconds / h.seconds
        del fp32
        common.release(device)
    trainer_s = t["window"].seconds
    rate = flops * args.steps / trainer_s if flops is not None else None  # FLOP/s achieved
    return {
        "model": name,
        "size": size,
        "channels": channels,
        "batch": cfg.batch_size,
        "updates": per_step,
        "trainer_img_s": images / trainer_s,
        "hand_img_s": images / h.seconds,
        "ratio": h.seconds / trainer_s,
        "trainer_ms": 1e3 * trainer_s / args.steps,
        "hand_ms": 1e3 * h.seconds / args.steps,
        "save_ms": 1e3 * max(t["save_s"], 0.0),
        "gflop_step": flops / 1e9 if flops is not None else None,
        "tflops": rate / 1e12 if rate is not None else None,
        "mfu_pct": 100 * rate / (args.peak_tflops * 1e12) if cuda and rate is not None else None,
        "trainer_peak_mb": t["summary"]["peak_memory_mb"],
        "hand_peak_mb": hand_peak,
        "bf16_vs_fp32": fp32_ratio,
        "gpu_util_pct": t["window"].gpu_util,
    }


def switched(cfg, args) -> tuple[Any, Any]:
    """(before, after) trainer settings of ``--compare``: before is today's code path (precision
    ``auto``, eager), after the switches as the params set them or ``--precision``/``--compile``
    override them. Memory layout (``train.channels_last``, long on by default) is the same in
    both."""
    before = with_overrides(cfg, {"precision": "auto", "compile": False})
    after = with_overrides(
        cfg,
        {
            "precision": args.precision or cfg.precision,
            "compile": cfg.compile if args.compile is None else args.compile,
        },
    )
    return before, after


def describe(cfg) -> str:
    """``fp32 eager NHWC``-style summary of a run's speed settings on its device."""
    precision = speed.resolve_precision(cfg.precision, resolve_device(cfg.device))
    compiled = f"compile:{cfg.compile_backend}" if cfg.compile else "eager"
    return f"{precision} {compiled} {'NHWC' if cfg.channels_last else 'NCHW'}"


def compare(name: str, size: int, channels: int, args, device: torch.device) -> dict[str, Any]:
    """One ``--compare`` row: the trainer before and after the switches, same seed and data."""
    model_cfg, cfg = load_model_config(args.params, name, ct=channels == 2)
    over = {"device": device.type, "seed": args.seed, "batch_size": args.batch_size or None}
    before, after = switched(with_overrides(cfg, over), args)
    data = random_images(4 * before.batch_size, channels, size, args.seed)
    row: dict[str, Any] = {"model": name, "size": size, "channels": channels,
                           "batch": before.batch_size}  # fmt: skip
    for tag, run_cfg in (("before", before), ("after", after)):
        torch.manual_seed(args.seed)
        model = build_model(name, model_cfg, channels, size)
        per_step = model.n_critic + 1 if model.has_critic else 1
        common.peak_memory_reset(device)
        t = trainer_run(model, data, run_cfg, args.warmup, args.steps)
        row[tag] = describe(run_cfg)
        row[f"{tag}_img_s"] = args.steps * per_step * run_cfg.batch_size / t["window"].seconds
        row[f"{tag}_warmup_s"] = t["warmup_s"]
        row[f"{tag}_peak_mb"] = t["summary"]["peak_memory_mb"]
        row[f"{tag}_gpu_util_pct"] = t["window"].gpu_util
        del model
        common.release(device)
    row["speedup"] = row["after_img_s"] / row["before_img_s"]
    return row


COMPARE_COLUMNS = [
    ("model", "model", "s"),
    ("px", "size", "d"),
    ("ch", "channels", "d"),
    ("batch", "batch", "d"),
    ("before", "before", "s"),
    ("after", "after", "s"),
    ("before img/s", "before_img_s", ".1f"),
    ("after img/s", "after_img_s", ".1f"),
    ("after/before", "speedup", ".2f"),
    ("warm-up s before", "before_warmup_s", ".1f"),
    ("warm-up s after", "after_warmup_s", ".1f"),
    ("peak MiB before", "before_peak_mb", ".0f"),
    ("peak MiB after", "after_peak_mb", ".0f"),
    ("GPU util % before", "before_gpu_util_pct", ".0f"),
    ("GPU util % after", "after_gpu_util_pct", ".0f"),
]


COLUMNS = [
    ("model", "model", "s"),
    ("px", "size", "d"),
    ("ch", "channels", "d"),
    ("batch", "batch", "d"),
    ("updates/step", "updates", "d"),
    ("trainer img/s", "trainer_img_s", ".1f"),
    ("hand img/s", "hand_img_s", ".1f"),
    ("trainer/hand", "ratio", ".3f"),
    ("trainer ms/step", "trainer_ms", ".1f"),
    ("hand ms/step", "hand_ms", ".1f"),
    ("save ms", "save_ms", ".0f"),
    ("GFLOP/step", "gflop_step", ".3g"),
    ("TFLOP/s", "tflops", ".3g"),
    ("MFU %", "mfu_pct", ".1f"),
    ("peak MiB trainer", "trainer_peak_mb", ".0f"),
    ("peak MiB hand", "hand_peak_mb", ".0f"),
    ("bf16+CL speed-up", "bf16_vs_fp32", ".2f"),
    ("GPU util %", "gpu_util_pct", ".0f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, REPO)
    parser.add_argument("--models", nargs="+", help="registry names (default: mnist.models)")
    parser.add_argument(
        "--geometries",
        nargs="+",
        type=geometry,
        default=[(32, 1), (64, 2)],
        help="SIZExCHANNELS (default: 32x1 64x2; the CT paper size is 128x2)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="default 8 (a 2-core run in about a minute); 0: the params' train.batch_size",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the device's peak for MFU (default 989: H100 SXM bf16 dense)",
    )
    common.add_switch_options(parser, "precision", "compile")
    common.add_device_options(parser, "auto")
    args = parser.parse_args(argv)
    common.check_steps(parser, args)
    if args.batch_size < 0:
        parser.error(f"--batch-size must be >= 0 (0: params), got {args.batch_size}")
    device = common.device_of(args)
    names = args.models or load_params_models(args.params)
    rows = []
    for size, channels in args.geometries:
        for name in names:
            print(f"{name} {size}x{size}x{channels} ...", file=sys.stderr, flush=True)
            rows.append((compare if args.compare else measure)(name, size, channels, args, device))
    meta = {
        **common.environment(device, torch.get_num_threads()),
        "warmup": args.warmup,
        "steps": args.steps,
        "peak_tflops": args.peak_tflops,
    }
    print(
        f"Training throughput on {meta['device']} ({meta['threads']} threads, torch "
        f"{meta['torch']}): {args.warmup} warm-up + {args.steps} timed steps per run"
    )
    common.publish(rows, COMPARE_COLUMNS if args.compare else COLUMNS, meta, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
