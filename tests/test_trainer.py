"""The one trainer: a step for every model, exact resume, failure modes, checkpoints, outputs."""

from __future__ import annotations

import csv

import matplotlib.image
import pytest
import torch

from models.config import TrainConfig
from models.eval.grid import save_grid
from models.registry import available, build_model, lookup
from models.train.checkpoint import load_checkpoint
from models.train.trainer import BatchSampler, train

from .tiny_configs import tiny_config

TINY = {"latent_dim": 8, "width": 4, "max_width": 8}


def _model(name: str, channels: int = 1, size: int = 16, seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_model(name, tiny_config(name, TINY, **over), channels, size)


def _data(channels: int = 1, size: int = 16, n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1


def _cfg(**over) -> TrainConfig:
    base = dict(
        steps=2,
        batch_size=4,
        lr=1e-3,
        checkpoint_every=2,
        sample_every=2,
        log_every=1,
        device="cpu",
        grid=2,
    )
    return TrainConfig(**{**base, **over})


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.mark.parametrize("name", available())
def test_one_step_every_model(name, tmp_path):
    channels = 2 if name in ("gvae", "vae_gan") or lookup(name)[0].conditional else 1
    model = _model(name, channels)
    before = _state(model)
    summary = train(model, _data(channels), _cfg(steps=1), tmp_path, progress=False)
    assert summary["steps"] == summary["steps_run"] == 1
    assert summary["final_losses"] and all(
        isinstance(v, float) and v == v for v in summary["final_losses"].values()
    )
    assert "total" in summary["final_losses"]
    assert ("critic_total" in summary["final_losses"]) == model.has_critic
    assert summary["peak_memory_mb"] is None and summary["device"] == "cpu"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one step must change the parameters"

    rows = _read_csv(tmp_path / "losses.csv")
    assert [r["step"] for r in rows] == ["1"]
    assert set(rows[0]) == {"step", *summary["final_losses"]}
    png = matplotlib.image.imread(tmp_path / "samples" / "step-000001.png")
    assert png.shape[0] == 2 * 17 + 1 and png.shape[1] == 2 * 17 + 1

    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert type(loaded) is type(model) and loaded.name == name and not loaded.training
    assert loaded.config == model.config and (loaded.channels, loaded.size) == (channels, 16)
    _assert_same_state(loaded.state_dict(), model.state_dict())
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["model_config"] == model.config.model_dump(mode="json") and ck["step"] == 1
    assert TrainConfig.model_validate(ck["train_config"]) == _cfg(steps=1)


@pytest.mark.parametrize("name", ["vae", "gvae", "vae_gan"])
def test_resume_equals_uninterrupted(name, tmp_path):
    data = _data()
    full = _model(name)
    train(full, data, _cfg(steps=4), tmp_path / "full", progress=False)

    part = _model(name)
    train(part, data, _cfg(steps=2), tmp_path / "part", progress=False)
    fresh = _model(name, seed=123)  # different init: everything must come from the checkpoint
    summary = train(fresh, data, _cfg(steps=4), tmp_path / "part", resume=True, progress=False)
    assert summary["steps_run"] == 2
    _assert_same_state(fresh.state_dict(), full.state_dict())
    assert _read_csv(tmp_path / "part" / "losses.csv") == _read_csv(
        tmp_path / "full" / "losses.csv"
    )


def test_resume_after_crash_truncates_log(tmp_path):
    """A run killed between checkpoints resumes from the last one; the CSV matches a clean run."""
    data = _data()
    full = _model("wgan_gp")
    train(full, data, _cfg(steps=6), tmp_path / "full", progress=False)

    crashing = _model("wgan_gp")
    calls = {"n": 0}
    original = crashing.losses

    def losses(x):
        calls["n"] += 1
        if calls["n"] == 4:  # inside step 4, after the step-2 checkpoint and step-3 log row
            raise KeyboardInterrupt
        return original(x)

    crashing.losses = losses
    with pytest.raises(KeyboardInterrupt):
        train(crashing, data, _cfg(steps=6), tmp_path / "crash", progress=False)
    assert [r["step"] for r in _read_csv(tmp_path / "crash" / "losses.csv")] == ["1", "2"]
    resumed = _model("wgan_gp", seed=9)
    train(resumed, data, _cfg(steps=6), tmp_path / "crash", resume=True, progress=False)
    _assert_same_state(resumed.state_dict(), full.state_dict())
    assert _read_csv(tmp_path / "crash" / "losses.csv") == _read_csv(
        tmp_path / "full" / "losses.csv"
    )


def test_resume_refuses_changed_settings(tmp_path):
    train(_model("vae"), _data(), _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(
            _model("vae"),
            _data(),
            _cfg(steps=4, batch_size=8),
            tmp_path,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="checkpoint is for"):
        train(
            _model("vae", latent_dim=4),
            _data(),
            _cfg(steps=4),
            tmp_path,
            resume=True,
            progress=False,
        )


@pytest.mark.parametrize("critic", [False, True])
def test_non_finite_loss_names_step_and_term(critic, tmp_path):
    model = _model("wgan_gp")
    target = "critic_loss" if critic else "losses"
    original = getattr(model, target)
    calls = {"n": 0}

    def poisoned(x):
        calls["n"] += 1
        terms = original(x)
        if calls["n"] == (12 if critic else 3):  # critic: 5 calls per step -> step 3
            key = "gp" if critic else "adv"
            terms = {**terms, key: terms[key] * float("nan")}
        return terms

    setattr(model, target, poisoned)
    with pytest.raises(FloatingPointError, match="step 3") as info:
        train(model, _data(), _cfg(steps=5), tmp_path, progress=False)
    assert ("critic_gp" if critic else ": adv") in str(info.value)


def test_huge_learning_rate_diverges_with_floating_point_error(tmp_path):
    model = _model("vae", likelihood="gaussian", sigma=1e-3, dropout=0.0)
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        train(
            model, _data(), _cfg(steps=200, lr=1e8, checkpoint_every=1000), tmp_path, progress=False
        )


def test_bad_data_rejected(tmp_path):
    model = _model("vae")
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        train(model, _data(size=32), _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(model, _data() * 3, _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(model, _data(n=3), _cfg(), tmp_path, progress=False)


def test_batch_order_is_a_pure_function_of_seed_and_index():
    a, b = BatchSampler(10, 3, seed=1), BatchSampler(10, 3, seed=1)
    seq = [a.indices(i).tolist() for i in range(7)]
    assert [b.indices(i).tolist() for i in reversed(range(7))][::-1] == seq
    epoch0 = sum(seq[:3], [])
    assert len(set(epoch0)) == 9  # 3 full batches per epoch, no repeats within an epoch
    assert seq[3:6] != seq[:3]  # a new permutation every epoch
    assert [BatchSampler(10, 3, seed=2).indices(i).tolist() for i in range(3)] != seq[:3]


def test_save_grid_overlays_mask(tmp_path):
    imgs = -torch.ones(3, 2, 8, 8)
    imgs[:, 1, 2:4, 2:4] = 1.0  # mask on a black image -> red pixels
    save_grid(imgs.numpy(), tmp_path / "g.png", nrow=2, scale=1)
    png = matplotlib.image.imread(tmp_path / "g.png")
    assert png.shape[:2] == (2 * 9 + 1, 2 * 9 + 1)
    r, g = png[1 + 2, 1 + 2, 0], png[1 + 2, 1 + 2, 1]
    assert r > 0.3 and g < 0.05
    assert png[1, 1, 0] < 0.05  # outside the mask stays black


def test_snapshots_are_one_seeded_draw_and_leave_the_trajectory_alone(tmp_path):
    import numpy as np

    data = _data()
    plain = _model("vae")
    train(plain, data, _cfg(steps=4), tmp_path / "plain")
    assert not list((tmp_path / "plain" / "samples").glob("*.npz"))  # off by default
    snap = _model("vae")
    train(snap, data, _cfg(steps=4, snapshot_samples=5), tmp_path / "snap")
    _assert_same_state(_state(plain), _state(snap))  # sampling consumed no training RNG
    files = sorted((tmp_path / "snap" / "samples").glob("step-*.npz"))
    assert [f.name for f in files] == ["step-000002.npz", "step-000004.npz"]
    last = np.load(files[-1])["images"]
    assert last.dtype == np.float16 and last.shape == (5, 1, 16, 16)
    expected = snap.sample(5, generator=torch.Generator().manual_seed(0 + 1)).numpy()
    np.testing.assert_allclose(last.astype(np.float32), expected, atol=2e-3)
    assert not np.allclose(np.load(files[0])["images"], last)  # the weights moved in between
