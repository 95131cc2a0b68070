"""The one trainer: every registered model goes through ``train``.

Per step: ``n_critic`` critic updates (each on its own batch) for models with a critic, then one
encoder/generator update. Precision and ``torch.compile`` follow ``train.precision`` and
``train.compile`` (:mod:`models.train.speed`; by default bf16 autocast on CUDA, fp32 eager on
CPU). Checkpoints
(:mod:`models.train.checkpoint`) are atomic and hold everything needed to resume bit-for-bit on
CPU: model and optimizer states, torch RNG states and the logged loss rows. Batch order is a
pure function of (seed, batch index): each epoch's permutation comes from a ``torch.Generator``
seeded with (seed, epoch), so a resumed run draws exactly the batches an uninterrupted one would.

A non-finite loss raises ``FloatingPointError`` naming the step and the loss term instead of
skipping the batch: a skipped divergence silently hides a broken run, while the last good
checkpoint is still on disk to inspect or resume from with other settings.

In a process group of 2+ ranks (``torchrun``, :mod:`models.train.distributed`) the loop runs
data-parallel: ``batch_size`` is the global batch, each rank trains on its slice, gradients and
logged losses are averaged over ranks, and only rank 0 reads or writes the run folder.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from models.base import GenerativeModel
from models.config import TrainConfig
from models.eval.grid import save_grid
from models.train import distributed, speed
from models.train.checkpoint import (
    CHECKPOINT,
    CRITIC_PREFIX,
    ResumeError,
    clear_products,
    data_fingerprint,
    read_checkpoint,
    resume_problem,
    save_checkpoint,
    set_rng_state,
)
from models.train.optim import make_optimizer
from models.train.snapshots import fixed_condition, save_snapshot


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cuda" without CUDA is a ``ValueError``."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class BatchSampler:
    """Batch ``i`` of a run is a pure function of (seed, i): epoch-wise seeded permutations."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ValueError(f"need at least batch_size={batch_size} images, got {n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size  # the incomplete last batch of an epoch is dropped
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, i: int) -> torch.Tensor:
        """Indices (batch_size,) of the i-th batch drawn in the run."""
        epoch, pos = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]


def _update(
    model, loss_fn, x, opt, params, cfg, amp, step: int, prefix: str, ctx=None
) -> dict[str, float]:
    """One optimizer step on ``loss_fn(x)["total"]``; returns the loss values as floats.

    With a ``Distributed`` ``ctx``, values and gradients are averaged over ranks (global batch).
    """
    with amp(), ctx.sharded_random(x.shape[0]) if ctx else contextlib.nullcontext():
        terms = loss_fn(x)
    values = torch.stack([t.detach().float() for t in terms.values()])
    values = (ctx.mean(values) if ctx else values).tolist()  # one sync
    logged = {f"{prefix}{k}": v for k, v in zip(terms, values, strict=True)}
    for key, v in logged.items():
        if not math.isfinite(v):
            raise FloatingPointError(f"{model.name}: non-finite loss at step {step}: {key} = {v}")
    opt.zero_grad(set_to_none=True)
    terms["total"].backward()
    if ctx is not None:
        ctx.average_gradients(params)
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return logged


def _check_data(model: GenerativeModel, data: torch.Tensor) -> None:
    expected = (model.channels, model.size, model.size)
    if data.ndim != 4 or tuple(data.shape[1:]) != expected:
        raise ValueError(
            f"data must be (N, {', '.join(map(str, expected))}), got {tuple(data.shape)}"
        )
    if not data.is_floating_point():
        raise ValueError(f"data must be floating point in [-1, 1], got {data.dtype}")
    lo, hi = data.min().item(), data.max().item()
    if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
        raise ValueError(f"data must lie in [-1, 1], got [{lo:.3f}, {hi:.3f}]")


@dataclass
class _Run:
    """What one ``train`` call works with, as :func:`_setup` prepared it."""

    model: GenerativeModel
    data: torch.Tensor  # on the device, in the model's memory format
    cfg: TrainConfig
    out_dir: Path
    ctx: distributed.Distributed | None  # None in one process
    main: bool  # the one process or rank 0: the rank that reads and writes the run folder
    device: torch.device
    amp: Callable[[], contextlib.AbstractContextManager]
    fingerprint: str
    gen_params: list[torch.nn.Parameter]
    critic_params: list[torch.nn.Parameter]
    gen_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer | None

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's part of a batch's indices (all of them in one process)."""
        return self.ctx.shard(indices) if self.ctx else indices


def _setup(model: GenerativeModel, data: torch.Tensor, cfg: TrainConfig, out_dir: Path) -> _Run:
    """Check the data, put model and data on the device and layout, build the optimizers."""
    out_dir = Path(out_dir)
    _check_data(model, data)
    ctx = distributed.current()  # None in one process
    main = ctx is None or ctx.rank == 0
    device = resolve_device(cfg.device)
    amp = speed.autocast(speed.resolve_precision(cfg.precision, device), device)
    model.to(device).train()
    data = data.to(device)
    if cfg.channels_last:  # batches indexed out of an NHWC tensor stay NHWC
        model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    fingerprint = data_fingerprint(data)
    if ctx is not None:  # before the optimizers exist; batch norm keeps its parameter objects
        ctx.prepare(model, cfg, device, fingerprint)
    if cfg.compile:  # after the batch-norm swap; in place, so checkpoints are unchanged
        speed.compile_networks(model, cfg.compile_backend)
    gen_params = list(model.generator_parameters())
    critic_params = list(model.critic_parameters())
    gen_opt = make_optimizer(cfg.optimizer, gen_params, cfg.lr, cfg.adam_betas)
    critic_opt = None
    if model.has_critic:
        critic_opt = make_optimizer(
            cfg.optimizer,
            critic_params,
            cfg.critic_lr or cfg.lr,
            cfg.critic_betas or cfg.adam_betas,
        )
    return _Run(
        model=model,
        data=data,
        cfg=cfg,
        out_dir=out_dir,
        ctx=ctx,
        main=main,
        device=device,
        amp=amp,
        fingerprint=fingerprint,
        gen_params=gen_params,
        critic_params=critic_params,
        gen_opt=gen_opt,
        critic_opt=critic_opt,
    )


def _restore(
    run: _Run, resume: bool | Literal["if_compatible"]
) -> tuple[int, list[dict[str, float]]]:
    """(start step, loss rows): a checkpoint's state continued, or the RNG seeded afresh.

    Rank 0 alone reads (and may clear) the run folder; every rank continues its answer.
    """
    model, cfg, out_dir, ctx = run.model, run.cfg, run.out_dir, run.ctx
    ck_path = out_dir / CHECKPOINT

    def resumable() -> dict[str, Any] | None:
        ck = read_checkpoint(ck_path) if resume and ck_path.exists() else None
        problem = ck and resume_problem(ck, model, cfg, run.fingerprint)
        if problem and resume != "if_compatible":
            raise ResumeError(f"{ck_path}: {problem}")
        if problem:  # a stale run of other settings or data: never continued, never left behind
            print(f"{out_dir}: starting afresh: {problem}", file=sys.stderr)
            clear_products(out_dir)
            ck = None
        return ck

    ck = resumable() if ctx is None else ctx.on_main(resumable)
    if ck is None:
        torch.manual_seed(cfg.seed)
        return 0, []
    model.load_state_dict(ck["model_state"])
    run.gen_opt.load_state_dict(ck["gen_opt_state"])
    if run.critic_opt is not None:
        run.critic_opt.load_state_dict(ck["critic_opt_state"])
    set_rng_state(ck["rng"])
    if ctx is not None:
        ctx.sync_cuda_rng(run.device)
    return ck["step"], [r for r in ck["loss_rows"] if r["step"] <= ck["step"]]


def _step(run: _Run, sampler: BatchSampler, s: int, per_step: int) -> dict[str, float]:
    """Step ``s + 1``: ``n_critic`` critic updates (each on its own batch), then one
    encoder/generator update; returns the logged loss values (critic terms prefixed)."""
    model, cfg, ctx, step = run.model, run.cfg, run.ctx, s + 1
    batch = iter(range(s * per_step, (s + 1) * per_step))
    logged: dict[str, float] = {}
    if model.has_critic:
        for _ in range(model.n_critic):
            x = run.data[run.shard(sampler.indices(next(batch))).to(run.device)]
            logged = _update(
                model,
                model.critic_loss,
                x,
                run.critic_opt,
                run.critic_params,
                cfg,
                run.amp,
                step,
                CRITIC_PREFIX,
                ctx,
            )
            model.after_critic_step()  # e.g. WGAN's weight clipping
        for p in run.critic_params:  # the generator step needs no critic gradients
            p.requires_grad_(False)
    try:
        x = run.data[run.shard(sampler.indices(next(batch))).to(run.device)]
        gen_opt, gen_params, amp = run.gen_opt, run.gen_params, run.amp
        logged = {
            **_update(model, model.losses, x, gen_opt, gen_params, cfg, amp, step, "", ctx),
            **logged,
        }
        model.after_generator_step()
    finally:
        for p in run.critic_params:
            p.requires_grad_(True)
    return logged


def _save_samples(run: _Run, step: int, fixed_z: torch.Tensor) -> None:
    """The fixed-noise sample grid of ``step`` (and its snapshot when one is asked for)."""
    model, cfg = run.model, run.cfg
    model.eval()
    with torch.no_grad(), run.amp():
        condition = fixed_condition(model, run.data, fixed_z.shape[0])
        grid = model.decode(fixed_z) if condition is None else model.decode(fixed_z, condition)
    model.train()
    save_grid(
        grid.float().cpu().numpy(),
        run.out_dir / "samples" / f"step-{step:06d}.png",
        cfg.grid,
        scale=1,
    )
    if cfg.snapshot_samples:
        dest = run.out_dir / "samples" / f"step-{step:06d}.npz"
        save_snapshot(model, cfg, dest, run.amp, run.data)


def _products(run: _Run, step: int, rows: list[dict[str, float]], fixed_z: torch.Tensor) -> None:
    """Rank 0 writes the checkpoint and the sample grid of ``step`` when they are due."""
    cfg = run.cfg
    checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
    if run.main and checkpoint:
        save_checkpoint(
            run.out_dir,
            run.model,
            cfg,
            run.fingerprint,
            step,
            run.gen_opt,
            run.critic_opt,
            rows,
        )
    if run.main and (step % cfg.sample_every == 0 or step == cfg.steps):
        _save_samples(run, step, fixed_z)
    if run.ctx is not None and checkpoint:
        run.ctx.barrier()  # the other ranks wait until rank 0's checkpoint and grid are written


def _summary(
    run: _Run, start: int, per_step: int, seconds: float, logged: dict[str, float]
) -> dict[str, Any]:
    """``train``'s return value (see there)."""
    cfg, device = run.cfg, run.device
    steps_run = max(cfg.steps - start, 0)
    return {
        "model": run.model.name,
        "device": str(device),
        "steps": max(cfg.steps, start),
        "steps_run": steps_run,
        "seconds": seconds,
        "step_s": seconds / steps_run if steps_run else None,
        "img_per_s": steps_run * per_step * cfg.batch_size / seconds if steps_run else None,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "world_size": 1 if run.ctx is None else run.ctx.world,
        "final_losses": logged,
    }


def train(
    model: GenerativeModel,
    data: torch.Tensor,
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool | Literal["if_compatible"] = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (N, C, H, W) in [-1, 1] for ``cfg.steps`` steps.

    Writes ``out_dir/checkpoint.pt`` (every ``checkpoint_every`` steps and at the end),
    ``out_dir/losses.csv`` (step + every loss term, every ``log_every`` steps; critic terms are
    prefixed ``critic_``) and ``out_dir/samples/step-XXXXXX.png`` (fixed noise). With
    ``resume=True`` and a checkpoint present, training continues from it (a missing checkpoint
    starts afresh); a checkpoint that :func:`models.train.checkpoint.resume_problem` refuses
    raises ``ResumeError``, or with ``resume="if_compatible"`` is removed with the loss log and
    sample grids, saying why on stderr, and training starts afresh (what ``dvc repro`` uses, so
    an interrupted long run goes on and a stale one never does). The caller seeds model
    initialisation; the trainer seeds everything after.
    Returns {"model", "device", "steps", "steps_run", "seconds", "step_s", "img_per_s"
    (global), "peak_memory_mb" (None on CPU), "world_size", "final_losses"}. Raises
    ``FloatingPointError`` on a non-finite loss (module docstring). Under a process group
    every rank calls this with the same arguments (module docstring).
    """
    run = _setup(model, data, cfg, out_dir)
    start, rows = _restore(run, resume)
    per_step = model.n_critic + 1 if model.has_critic else 1
    sampler = BatchSampler(run.data.shape[0], cfg.batch_size, cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    fixed_z = torch.randn(cfg.grid**2, model.latent_dim, generator=noise_gen).to(run.device)

    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    t0 = time.perf_counter()
    logged: dict[str, float] = {}
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not (progress and run.main),
        desc=model.name,
        dynamic_ncols=True,
    )
    for s in bar:
        step = s + 1
        logged = _step(run, sampler, s, per_step)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append({"step": step, **logged})
            bar.set_postfix(total=f"{logged['total']:.4g}", refresh=False)
        _products(run, step, rows, fixed_z)
    bar.close()
    return _summary(run, start, per_step, time.perf_counter() - t0, logged)
