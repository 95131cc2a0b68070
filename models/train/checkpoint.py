"""The trainer's run folder: checkpoint save/load, resume checks, the loss log, digests.

A checkpoint holds everything needed to resume bit-for-bit on CPU: model and optimizer states,
torch RNG states and the logged loss rows, with the model's name, config and geometry (so
:func:`load_checkpoint` rebuilds the network without the params file) and the fingerprint of
the training data. Writes are atomic.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch

from common.atomic import atomic_path
from models.base import GenerativeModel
from models.config import TrainConfig
from models.registry import build_model

CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.csv"
CRITIC_PREFIX = "critic_"  # the loss log's columns of a critic's terms
# Settings that change the trajectory; a resume must not change them.
_RESUME_KEYS = (
    "seed",
    "precision",  # another precision or compiler is another trajectory (models.train.speed)
    "compile",
    "compile_backend",
    "batch_size",
    "optimizer",
    "lr",
    "adam_betas",
    "critic_lr",
    "critic_betas",
    "grad_clip",
)


class ResumeError(ValueError):
    """A checkpoint that this run may not continue (other model, data or trajectory settings)."""


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


def rng_state() -> dict[str, Any]:
    """The global torch (and CUDA) RNG states, as a checkpoint stores them."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states of :func:`rng_state` (CUDA's only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_losses(dest: Path, rows: list[dict[str, float]]) -> None:
    """Write the logged loss rows as a CSV (header from the first row); nothing if none."""
    if not rows:
        return
    with atomic_path(dest) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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


def clear_products(out_dir: Path) -> None:
    """Remove what ``train`` writes into a run folder (checkpoint, loss log, sample grids)."""
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    (out_dir / LOSSES).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "samples", ignore_errors=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict at ``path``, loaded onto the CPU (weights only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(
    out_dir: Path,
    model: GenerativeModel,
    cfg: TrainConfig,
    fingerprint: str,
    step: int,
    gen_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer | None,
    rows: list[dict[str, float]],
) -> None:
    """Write ``out_dir/checkpoint.pt`` at ``step`` (atomically), then the loss log."""
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
        "rng": rng_state(),
        "loss_rows": rows,
    }
    with atomic_path(out_dir / CHECKPOINT) as tmp:
        torch.save(state, tmp)
    write_losses(out_dir / LOSSES, rows)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild the exact network stored in a trainer checkpoint; returned in eval mode.

    The checkpoint's model name, validated config, channels and size go through
    ``build_model``, so the architecture never depends on the current params file.
    """
    ck = torch.load(Path(path), map_location=map_location, weights_only=True)
    model = build_model(ck["model_name"], ck["model_config"], ck["channels"], ck["size"])
    model.load_state_dict(ck["model_state"])
    return model.to(map_location).eval()
