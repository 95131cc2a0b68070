"""What every rank runs under ``torchrun --nproc-per-node 2 -m tests.ddp_launch ROOT``.

tests/test_ddp.py prepares ROOT (params.yaml, an MNIST-format data folder) and compares what
this writes with one-process runs. Each rank:

1. opens the process group from torchrun's environment with the function ``gvae train`` uses
   (``models.train.distributed.process_group``) and runs ``gvae train --model vae`` through the CLI
   inside it. One group per process: gloo cannot reliably open a second default group in
   the same torchrun launch (it may reconnect to the first group's addresses);
2. in float64 (tests/test_ddp.py says why), per ``MODELS`` entry, trains 4 steps uninterrupted,
   then 4 steps in a second folder with a crash inside step 4 (both ranks) and a resume from
   the step-2 checkpoint by a differently initialised model;
3. triggers three errors that must reach every rank (no rank left waiting): a global batch
   that does not divide over the ranks, other data on one rank, a refused resume;
4. writes ``results/rank<r>.json`` (errors, stage exit code, and every file event under
   ``ROOT/runs`` seen by a Python audit hook) and ``results/<model>-rank<r>.pt`` (final
   weights of both runs). The audit hook is how the test proves that rank 1 never touches the
   run folders.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

# Events of file-system access; an audit hook sees every one a process makes, torch.save's and
# tempfile's included.
_FILE_EVENTS = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.chmod",
    "os.truncate",
    "os.listdir",
    "os.scandir",
    "shutil.rmtree",
}
TINY = {"latent_dim": 8, "width": 4, "max_width": 8}
# Per-sample noise, dropout and batch norm (vae); a critic with the gradient penalty (wgan_gp);
# both, with two stacked kinds of fake (gvae). Two critic steps per step keep the test short.
MODELS = {"vae": {}, "wgan_gp": {"n_critic": 2}, "gvae": {"n_critic": 2}}
STEPS, CRASH_CALL = 4, 4


def watch(root: Path, seen: list[str]) -> None:
    """Record every file event under ``root`` into ``seen`` (for the rest of the process)."""
    prefix = str(root.resolve())

    def hook(event: str, args: tuple) -> None:
        if event not in _FILE_EVENTS or not args or isinstance(args[0], int):
            return
        try:
            path = os.path.abspath(os.fsdecode(os.fspath(args[0])))
        except TypeError:
            return
        if path.startswith(prefix):
            seen.append(f"{event} {path}")

    sys.addaudithook(hook)


def tiny_model(name: str, seed: int):
    """A 16 px, 1-channel ``MODELS`` model initialised from ``seed``."""
    from models.registry import build_model

    torch.manual_seed(seed)
    return build_model(name, {**TINY, **MODELS[name]}, 1, 16)


def tiny_data() -> torch.Tensor:
    """(24, 1, 16, 16) in [-1, 1] of the default dtype, the same on every rank."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(24, 1, 16, 16, generator=g) * 2 - 1


def tiny_cfg(**over):
    """Trainer settings of the comparisons: global batch 8, a checkpoint every 2 steps."""
    from models.config import TrainConfig

    base = dict(
        steps=STEPS,
        batch_size=8,
        lr=1e-3,
        checkpoint_every=2,
        sample_every=2,
        log_every=1,
        device="cpu",
        grid=2,
    )
    return TrainConfig(**{**base, **over})


def _crash_at(model, call: int) -> None:
    original, calls = model.losses, {"n": 0}

    def losses(x):
        calls["n"] += 1
        if calls["n"] == call:  # inside step 4: after the step-2 checkpoint and step-3 log row
            raise KeyboardInterrupt
        return original(x)

    model.losses = losses


def _error(fn) -> str | None:
    try:
        fn()
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _trainer_runs(root: Path, rank: int) -> dict[str, str | None]:
    from models.train.trainer import train

    torch.set_default_dtype(torch.float64)
    runs, results, data = root / "runs", root / "results", tiny_data()
    for name in MODELS:
        full = tiny_model(name, 0)
        train(full, data, tiny_cfg(), runs / f"{name}-full", progress=False)
        crashing = tiny_model(name, 0)
        _crash_at(crashing, CRASH_CALL)
        try:
            train(crashing, data, tiny_cfg(), runs / f"{name}-part", progress=False)
        except KeyboardInterrupt:
            pass
        resumed = tiny_model(name, 9)  # other weights: everything must come from the checkpoint
        train(resumed, data, tiny_cfg(), runs / f"{name}-part", resume=True, progress=False)
        states = {"full": full.state_dict(), "resumed": resumed.state_dict()}
        torch.save(states, results / f"{name}-rank{rank}.pt")

    odd = data if rank == 0 else data.flip(0)
    return {
        "batch": _error(
            lambda: train(tiny_model("vae", 0), data, tiny_cfg(batch_size=5), runs / "odd")
        ),
        "data": _error(lambda: train(tiny_model("vae", 0), odd, tiny_cfg(), runs / "odd")),
        "resume": _error(
            lambda: train(
                tiny_model("vae", 0), data, tiny_cfg(lr=2e-3), runs / "vae-full", resume=True
            )
        ),
    }


def main(root: Path) -> None:
    """Run the steps of the module docstring on this rank."""
    from models.train.distributed import process_group
    from pipeline.cli import main as cli

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    seen: list[str] = []
    watch(root / "runs", seen)
    with process_group() as ctx:
        assert ctx is not None and ctx.rank == rank and ctx.world == 2
        code = cli(
            [
                "train",
                "--params",
                str(root / "params.yaml"),
                "--model",
                "vae",
                "--dataset",
                "mnist",
                "--data",
                str(root / "data"),
                "--out",
                str(root / "runs" / "stage"),
                "--no-progress",
            ]
        )
        errors = _trainer_runs(root, rank)
    record = {"stage_code": code, "errors": errors, "file_events": seen}
    (root / "results" / f"rank{rank}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
