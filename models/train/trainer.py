"""The one trainer: every registered model goes through ``train``.

Per step: ``n_critic`` critic updates (each on its own batch) for models with a critic, then one
encoder/generator update. bf16 autocast on CUDA, fp32 on CPU. Checkpoints are atomic and hold
everything needed to resume bit-for-bit on CPU: model and optimizer states, torch RNG states and
the logged loss rows. Batch order is a pure function of (seed, batch index): each epoch's
permutation comes from a ``torch.Generator`` seeded with (seed, epoch), so a resumed run draws
exactly the batches an uninterrupted one would.

A non-finite loss raises ``FloatingPointError`` naming the step and the loss term instead of
skipping the batch: a skipped divergence silently hides a broken run, while the last good
checkpoint is still on disk to inspect or resume from with other settings.

In a process group of 2+ ranks (``torchrun``, :mod:`models.train.distributed`) the loop runs
data-parallel: ``batch_size`` is the global batch, each rank trains on its slice, gradients and
logged losses are averaged over ranks, and only rank 0 reads or writes the run folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from common.atomic import atomic_path
from models.base import GenerativeModel
from models.config import TrainConfig
from models.eval.grid import save_grid
from models.registry import build_model
from models.train import distributed
from models.train.optim import make_optimizer

CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.csv"
CRITIC_PREFIX = "critic_"  # the loss log's columns of a critic's terms
# Settings that change the trajectory; a resume must not change them.
_RESUME_KEYS = (
    "seed",
    "batch_size",
    "optimizer",
    "lr",
    "adam_betas",
    "critic_lr",
    "critic_betas",
    "grad_clip",
)


def save_snapshot(model: GenerativeModel, cfg: TrainConfig, dest: Path, amp) -> Path:
    """Write ``cfg.snapshot_samples`` samples of ``model`` to ``dest`` (float16 npz ``images``).

    The same seeded draw at every snapshot (``model.sample`` with generator seed
    ``cfg.seed + 1``, independent of the training RNG), so the snapshots of a run differ only
    by the weights; ``model.sample`` runs in eval mode and restores the training mode.
    """
    import numpy as np

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    chunks, left = [], cfg.snapshot_samples
    with torch.no_grad(), amp():
        while left:
            n = min(left, 256)
            chunks.append(model.sample(n, generator=gen).float().cpu())
            left -= n
    images = torch.cat(chunks).numpy().astype(np.float16)
    with atomic_path(dest) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(fh, images=images)
    return dest


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


def _write_csv(dest: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    with atomic_path(dest) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def data_fingerprint(data: torch.Tensor) -> str:
    """sha256 (16 hex digits) of the training tensor's shape and bytes: a resume keeps its data."""
    h = hashlib.sha256(str(tuple(data.shape)).encode())
    h.update(data.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_digest(path: str | Path) -> str:
    """sha256 (16 hex digits) of a checkpoint file: which trained weights made a product."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class ResumeError(ValueError):
    """A checkpoint that this run may not continue (other model, data or trajectory settings)."""


def resume_problem(
    ck: dict[str, Any], model: GenerativeModel, cfg: TrainConfig, fingerprint: str
) -> str | None:
    """Why checkpoint ``ck`` cannot be continued by this run, or None if it can.

    A checkpoint continues only the same network (name, config, shape) on the same data
    (``fingerprint``) with the same trajectory settings (``_RESUME_KEYS``), and only forwards:
    one already past ``cfg.steps`` would hand back a longer-trained model than asked for.
    """
    mine = (model.name, model.config.model_dump(mode="json"), model.channels, model.size)
    theirs = (ck["model_name"], ck["model_config"], ck["channels"], ck["size"])
    if mine != theirs:
        return f"checkpoint is for {theirs}, not the model given {mine}"
    if ck.get("data_fingerprint") != fingerprint:
        return (
            f"checkpoint was trained on other data (fingerprint {ck.get('data_fingerprint')}, "
            f"this data {fingerprint})"
        )
    old = TrainConfig.model_validate(ck["train_config"])
    changed = [k for k in _RESUME_KEYS if getattr(old, k) != getattr(cfg, k)]
    if changed:
        return f"cannot resume with changed train settings {changed}"
    if ck["step"] > cfg.steps:
        return f"checkpoint is at step {ck['step']}, beyond the {cfg.steps} steps asked for"
    return None


def _clear_products(out_dir: Path) -> None:
    """Remove what ``train`` writes into a run folder (checkpoint, loss log, sample grids)."""
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    (out_dir / LOSSES).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "samples", ignore_errors=True)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    starts afresh); a checkpoint that :func:`resume_problem` refuses raises ``ResumeError``, or
    with ``resume="if_compatible"`` is removed with the loss log and sample grids, saying why on
    stderr, and training starts afresh (what ``dvc repro`` uses, so an interrupted long run goes
    on and a stale one never does). The caller seeds model initialisation; the trainer seeds
    everything after.
    Returns {"model", "device", "steps", "steps_run", "seconds", "step_s", "img_per_s"
    (global), "peak_memory_mb" (None on CPU), "world_size", "final_losses"}. Raises
    ``FloatingPointError`` on a non-finite loss (module docstring). Under a process group
    every rank calls this with the same arguments (module docstring).
    """
    out_dir = Path(out_dir)
    _check_data(model, data)
    ctx = distributed.current()  # None in one process
    main = ctx is None or ctx.rank == 0
    device = resolve_device(cfg.device)
    amp = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else (contextlib.nullcontext)
    )
    model.to(device).train()
    data = data.to(device)
    if cfg.channels_last:  # batches indexed out of an NHWC tensor stay NHWC
        model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    fingerprint = data_fingerprint(data)
    if ctx is not None:  # before the optimizers exist; batch norm keeps its parameter objects
        ctx.prepare(model, cfg, device, fingerprint)
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

    start, rows = 0, []
    ck_path = out_dir / CHECKPOINT

    def resumable() -> dict[str, Any] | None:
        ck = _read_checkpoint(ck_path) if resume and ck_path.exists() else None
        problem = ck and resume_problem(ck, model, cfg, fingerprint)
        if problem and resume != "if_compatible":
            raise ResumeError(f"{ck_path}: {problem}")
        if problem:  # a stale run of other settings or data: never continued, never left behind
            print(f"{out_dir}: starting afresh: {problem}", file=sys.stderr)
            _clear_products(out_dir)
            ck = None
        return ck

    # Rank 0 alone reads (and may clear) the run folder; every rank continues its answer.
    ck = resumable() if ctx is None else ctx.on_main(resumable)
    if ck is not None:
        model.load_state_dict(ck["model_state"])
        gen_opt.load_state_dict(ck["gen_opt_state"])
        if critic_opt is not None:
            critic_opt.load_state_dict(ck["critic_opt_state"])
        _set_rng_state(ck["rng"])
        if ctx is not None:
            ctx.sync_cuda_rng(device)
        start, rows = ck["step"], [r for r in ck["loss_rows"] if r["step"] <= ck["step"]]
    else:
        torch.manual_seed(cfg.seed)

    per_step = model.n_critic + 1 if model.has_critic else 1
    sampler = BatchSampler(data.shape[0], cfg.batch_size, cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    fixed_z = torch.randn(cfg.grid**2, model.latent_dim, generator=noise_gen).to(device)

    def save_checkpoint(step: int) -> None:
        state = {
            "model_name": model.name,
            "model_config": model.config.model_dump(mode="json"),
            "channels": model.channels,
            "size": model.size,
            "train_config": cfg.model_dump(mode="json"),
            "data_fingerprint": fingerprint,
            "step": step,
            "model_state": model.state_dict(),
            "gen_opt_state": gen_opt.state_dict(),
            "critic_opt_state": critic_opt.state_dict() if critic_opt else None,
            "rng": _rng_state(),
            "loss_rows": rows,
        }
        with atomic_path(ck_path) as tmp:
            torch.save(state, tmp)
        _write_csv(out_dir / LOSSES, rows)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    logged: dict[str, float] = {}
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        disable=not (progress and main),
        desc=model.name,
        dynamic_ncols=True,
    )
    shard = ctx.shard if ctx else (lambda indices: indices)  # this rank's part of a batch
    for s in bar:
        step = s + 1
        batch = iter(range(s * per_step, (s + 1) * per_step))
        logged = {}
        if model.has_critic:
            for _ in range(model.n_critic):
                x = data[shard(sampler.indices(next(batch))).to(device)]
                logged = _update(
                    model,
                    model.critic_loss,
                    x,
                    critic_opt,
                    critic_params,
                    cfg,
                    amp,
                    step,
                    CRITIC_PREFIX,
                    ctx,
                )
                model.after_critic_step()  # e.g. WGAN's weight clipping
            for p in critic_params:  # the generator step needs no critic gradients
                p.requires_grad_(False)
        try:
            x = data[shard(sampler.indices(next(batch))).to(device)]
            logged = {
                **_update(model, model.losses, x, gen_opt, gen_params, cfg, amp, step, "", ctx),
                **logged,
            }
            model.after_generator_step()
        finally:
            for p in critic_params:
                p.requires_grad_(True)

        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append({"step": step, **logged})
            bar.set_postfix(total=f"{logged['total']:.4g}", refresh=False)
        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if main and checkpoint:
            save_checkpoint(step)
        if main and (step % cfg.sample_every == 0 or step == cfg.steps):
            model.eval()
            with torch.no_grad(), amp():
                grid = model.decode(fixed_z)
            model.train()
            save_grid(
                grid.float().cpu().numpy(),
                out_dir / "samples" / f"step-{step:06d}.png",
                cfg.grid,
                scale=1,
            )
            if cfg.snapshot_samples:
                save_snapshot(model, cfg, out_dir / "samples" / f"step-{step:06d}.npz", amp)
        if ctx is not None and checkpoint:
            ctx.barrier()  # the other ranks wait until rank 0's checkpoint and grid are written
    bar.close()
    seconds = time.perf_counter() - t0
    steps_run = max(cfg.steps - start, 0)
    return {
        "model": model.name,
        "device": str(device),
        "steps": max(cfg.steps, start),
        "steps_run": steps_run,
        "seconds": seconds,
        "step_s": seconds / steps_run if steps_run else None,
        "img_per_s": steps_run * per_step * cfg.batch_size / seconds if steps_run else None,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "world_size": 1 if ctx is None else ctx.world,
        "final_losses": logged,
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild the exact network stored in a trainer checkpoint; returned in eval mode.

    The checkpoint's model name, validated config, channels and size go through
    ``build_model``, so the architecture never depends on the current params file.
    """
    ck = torch.load(Path(path), map_location=map_location, weights_only=True)
    model = build_model(ck["model_name"], ck["model_config"], ck["channels"], ck["size"])
    model.load_state_dict(ck["model_state"])
    return model.to(map_location).eval()
