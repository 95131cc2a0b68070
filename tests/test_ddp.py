"""Data-parallel training: 2 CPU processes (gloo, torchrun) against one process.

One ``torchrun --nproc-per-node 2 -m tests.ddp_launch`` run (module fixture) does every
multi-process part; see tests/ddp_launch.py. The one-process references run here.

Tolerances of the 2-rank vs 1-process comparisons, and why they are not 0: both runs compute
the same sums in another order. A global batch mean becomes the mean of two shard means,
batch-norm statistics come from two partial sums, gradients are summed over ranks; each result
differs by rounding. Random numbers are not a source: every rank draws exactly the one-process
numbers (models.train.sharded_random, checked bit for bit below).
* Trainer runs compare in float64. In float32, Adam's first step is lr * sign(g) for every
  weight, so a weight whose true gradient is 0 (a convolution bias before batch norm) moves by
  +-lr on rounding noise, and a few GAN steps carry such flips into the losses (measured: a
  1e-7 relative change of wgan_gp's weights moves its step-4 losses by up to 40%). In float64
  that noise sits far below Adam's eps; what is left is the float32 in which the models compute
  likelihoods and scores and the trainer logs: measured <= 1.2e-6 relative on the losses and
  <= 1e-8 on the weights, asserted at 1e-5 and 1e-7.
* The stage runs the VAE in float32 as deployed: measured <= 3e-7 relative, asserted at 1e-4.
The 2-rank resumed run repeats the uninterrupted 2-rank run's arithmetic exactly: bit for bit.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from models.train.distributed import CPUSyncBatchNorm, Distributed, ShardedRandom, sync_batchnorm
from models.train.trainer import train
from pipeline.cli import main as cli

from .conftest import REPO
from .ddp_launch import MODELS, STEPS, tiny_cfg, tiny_data, tiny_model

# Module docstring: float64 trainer runs (losses relative, weights absolute), float32 stage.
LOSS_RTOL, WEIGHT_ATOL, STAGE_RTOL = 1e-5, 1e-7, 1e-4


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _stage_inputs(root):
    """A tiny MNIST-format folder and params: 4 steps of global batch 8."""
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir(parents=True)
    x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    np.savez(data / "data.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(steps=4, batch_size=8, checkpoint_every=2, sample_every=2, log_every=1)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """ROOT of one 2-process torchrun of tests.ddp_launch, and its combined output."""
    root = tmp_path_factory.mktemp("ddp")
    _stage_inputs(root)
    (root / "results").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tests.ddp_launch", str(root)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, to stop by id if SIGTERM is not enough
    )
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers (their own sessions) on SIGTERM
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 600 s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return root, out


def _record(root, rank):
    return json.loads((root / "results" / f"rank{rank}.json").read_text())


def _assert_rows_close(got, want, rtol):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in g:
            np.testing.assert_allclose(
                float(g[key]), float(w[key]), rtol=rtol, atol=rtol * 1e-2, err_msg=key
            )


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_match_one_process(ddp_run, name, tmp_path, float64):
    """2 ranks with global batch 8 = 1 process with batch 8: every loss, every step, weights."""
    root, _ = ddp_run
    single = tiny_model(name, 0)
    train(single, tiny_data(), tiny_cfg(), tmp_path, progress=False)
    got = _read_csv(root / "runs" / f"{name}-full" / "losses.csv")
    assert len(got) == STEPS
    _assert_rows_close(got, _read_csv(tmp_path / "losses.csv"), LOSS_RTOL)

    rank0 = torch.load(root / "results" / f"{name}-rank0.pt", weights_only=True)
    rank1 = torch.load(root / "results" / f"{name}-rank1.pt", weights_only=True)
    for key, want in single.state_dict().items():
        assert torch.equal(rank0["full"][key], rank1["full"][key]), f"replicas differ: {key}"
        if want.is_floating_point():
            torch.testing.assert_close(rank0["full"][key], want, rtol=0, atol=WEIGHT_ATOL)
        else:
            assert torch.equal(rank0["full"][key], want), key
    ck = torch.load(root / "runs" / f"{name}-full" / "checkpoint.pt", weights_only=True)
    assert set(ck["model_state"]) == set(single.state_dict())  # synced batch norm: same keys


@pytest.mark.parametrize("name", MODELS)
def test_crash_then_resume_equals_uninterrupted(ddp_run, name):
    """Both ranks stopped inside step 4, resumed from the step-2 checkpoint: bit-identical."""
    root, _ = ddp_run
    full, part = root / "runs" / f"{name}-full", root / "runs" / f"{name}-part"
    assert _read_csv(part / "losses.csv") == _read_csv(full / "losses.csv")
    for rank in (0, 1):
        states = torch.load(root / "results" / f"{name}-rank{rank}.pt", weights_only=True)
        for key, value in states["full"].items():
            assert torch.equal(states["resumed"][key], value), f"rank {rank}: {key}"
    assert sorted(p.name for p in (part / "samples").iterdir()) == [
        "step-000002.png",
        "step-000004.png",
    ]


def test_only_rank0_touches_the_run_folders(ddp_run):
    root, _ = ddp_run
    events = {rank: _record(root, rank)["file_events"] for rank in (0, 1)}
    assert events[1] == []
    # The hook does see file events: rank 0 wrote the checkpoints, loss logs, grids, summary.
    assert any("stage/.summary.json." in e and e.startswith("os.rename") for e in events[0])
    assert any("wgan_gp-part/.checkpoint.pt." in e and e.startswith("os.rename") for e in events[0])


def test_errors_reach_every_rank(ddp_run):
    """No rank is left waiting in a collective: each error is raised on both ranks."""
    root, _ = ddp_run
    errors = [_record(root, rank)["errors"] for rank in (0, 1)]
    assert errors[0] == errors[1]
    assert "batch_size 5 is the global batch and must be a multiple of the 2" in errors[0]["batch"]
    assert "ranks disagree on training data fingerprint" in errors[0]["data"]
    assert "cannot resume with changed train settings ['lr']" in errors[0]["resume"]


def test_gvae_train_under_torchrun(ddp_run, tmp_path):
    """The stage: one summary line, a complete run folder, the one-process losses."""
    root, out = ddp_run
    assert [_record(root, rank)["stage_code"] for rank in (0, 1)] == [0, 0]
    assert out.count("vae on mnist: 4 steps") == 1  # printed by rank 0 only
    run = root / "runs" / "stage"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (run / "samples" / "step-000004.png").exists()

    args = ["train", "--params", str(root / "params.yaml"), "--model", "vae"]
    args += ["--dataset", "mnist", "--data", str(root / "data"), "--out", str(tmp_path)]
    assert cli([*args, "--no-progress"]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["world_size"] == 1
    _assert_rows_close(
        _read_csv(run / "losses.csv"), _read_csv(tmp_path / "losses.csv"), STAGE_RTOL
    )


def _blocks(t, k, rank, world, b):
    """Rank ``rank``'s rows of a global (k * world * b, ...) tensor: (k * b, ...)."""
    return torch.cat([t.view(k, world, b, *t.shape[1:])[j, rank] for j in range(k)])


def test_sharded_random_slices_the_one_process_draws():
    """Each rank gets its rows of exactly the numbers one process draws, in its layout."""
    b, world = 3, 2
    x = torch.randn(2 * world * b, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    mu = torch.randn(world * b, 7)

    def draws(x, mu, n):
        torch.manual_seed(1)
        out = [
            torch.randn(n, 5),  # one block of per-sample noise
            torch.rand(2 * n, 1, 1, 1),  # two stacked blocks (GP weights of two kinds of fake)
            torch.randn_like(mu),
            F.dropout(x, 0.3, True),  # channels_last: masks fill memory in NHWC order
            torch.randint(0, 8, (n,)),  # diffusion timesteps
            torch.randn(7),  # not per sample: the same on every rank
        ]
        return out, torch.get_rng_state()

    ref, ref_state = draws(x, mu, world * b)
    for rank in range(world):
        mine = _blocks(x, 2, rank, world, b).contiguous(memory_format=torch.channels_last)
        with ShardedRandom(b, rank, world):
            got, state = draws(mine, _blocks(mu, 1, rank, world, b), b)
        assert torch.equal(state, ref_state)  # the generator stays in step with one process
        for i, k in enumerate([1, 2, 1, 2, 1, None]):
            want = ref[i] if k is None else _blocks(ref[i], k, rank, world, b)
            assert torch.equal(got[i], want), f"draw {i}, rank {rank}"
        assert got[3].is_contiguous(memory_format=torch.channels_last)


def test_sharded_random_refuses_what_it_cannot_slice():
    with ShardedRandom(2, 0, 2), pytest.raises(NotImplementedError, match="torch.randn, rand"):
        torch.normal(torch.zeros(2, 3), 1.0)


def test_batch_must_divide_over_ranks():
    ctx = Distributed(rank=1, world=4)
    assert ctx.check_batch(32) == 8
    assert torch.equal(ctx.shard(torch.arange(32)), torch.arange(8, 16))
    with pytest.raises(ValueError, match="batch_size 30 is the global batch"):
        ctx.check_batch(30)


def test_sync_batchnorm_keeps_parameters_and_keys():
    plain, model = tiny_model("vae", 0), tiny_model("vae", 0)
    before = dict(model.state_dict(keep_vars=True))
    sync_batchnorm(model, CPUSyncBatchNorm)
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)  # the very tensors optimisers hold
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(type(m) is CPUSyncBatchNorm for m in norms)
    x = tiny_data()[:4]
    torch.manual_seed(3)
    want = plain.losses(x)
    torch.manual_seed(3)
    got = model.losses(x)  # outside a process group it is plain batch norm
    assert all(torch.equal(got[k], want[k]) for k in want)
