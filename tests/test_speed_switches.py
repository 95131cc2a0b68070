"""The trainer's speed switches (``train.precision``, ``train.compile``, ``train.channels_last``):
every registry model trains with each switch on and off with the same shapes and finite losses,
and a compiled or bf16 run resumes bit-identically with itself."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch

from models.config import TrainConfig
from models.registry import available, build_model, lookup
from models.train import speed
from models.train.trainer import train

from .tiny_configs import tiny_config

TINY = {"latent_dim": 8, "width": 4, "max_width": 8}

# aot_eager traces every graph as inductor would (dynamo + AOTAutograd) but runs eager kernels:
# it fails where inductor's graph capture fails (e.g. a double backward through a compiled
# critic) without inductor's C++ compile time, so the whole registry can be checked.
SWITCHES = {
    "off": {},
    "bf16": {"precision": "bf16"},
    "compile": {"compile": True, "compile_backend": "aot_eager"},
    "nchw": {"channels_last": False},
}


def _model(name: str, channels: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, tiny_config(name, TINY), channels, 16)


def _data(channels: int, n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, channels, 16, 16, generator=g) * 2 - 1
    if channels == 2:
        x[:, 1] = torch.where(x[:, 1] > 0.5, 1.0, -1.0)
    return x


def _cfg(**over) -> TrainConfig:
    base = dict(steps=1, batch_size=4, lr=1e-3, checkpoint_every=1, sample_every=1,
                log_every=1, device="cpu", grid=2)  # fmt: skip
    return TrainConfig(**{**base, **over})


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Let ``precision: bf16`` run on this CPU whatever it has: the bf16 code path is tested
    for correctness here (emulated bf16 is slow, not wrong); its speed is the benchmark's."""
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)


def _run(name: str, switch: str, tmp_path, **over):
    channels = 2 if lookup(name)[0].conditional or name in ("gvae", "cgvae") else 1
    model = _model(name, channels)
    summary = train(model, _data(channels), _cfg(**SWITCHES[switch], **over), tmp_path / switch,
                    progress=False)  # fmt: skip
    model.eval()
    with torch.no_grad():
        cond = _data(channels, 2) if model.conditional else None
        drawn = model.sample(2, condition=cond) if cond is not None else model.sample(2)
    return summary["final_losses"], drawn


@pytest.mark.parametrize("switch", ["bf16", "compile", "nchw"])
@pytest.mark.parametrize("name", available())
def test_every_model_trains_with_each_switch(name, switch, tmp_path, cpu_bf16):
    losses_off, drawn_off = _run(name, "off", tmp_path)
    losses_on, drawn_on = _run(name, switch, tmp_path)
    assert losses_on.keys() == losses_off.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses_on.values()), losses_on
    assert drawn_on.shape == drawn_off.shape and drawn_on.dtype == drawn_off.dtype
    assert torch.isfinite(drawn_on).all()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _losses(run_dir) -> dict[str, list[float]]:
    with open(run_dir / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k != "step"}


# (model, switch, relative tolerance of every logged loss over the first 4 steps against the
# eager fp32 run with the same seed). Compiled fp32 draws the same random numbers (ATen's
# generator) and differs by float rounding in fused kernels only; bf16 keeps 8 bits of mantissa
# in the convolutions: a VAE's losses move by at most 2% in 4 steps.
SWITCHED = [
    # A critic's losses are a chaotic function of its first updates: bf16 moved GVAE's critic
    # loss from -0.41 to -0.21 at step 2, so only its resume is checked (rtol None).
    ("gvae", {"precision": "bf16"}, None),
    ("vae", {"precision": "bf16"}, 0.02),
    ("gvae", {"compile": True, "compile_backend": "aot_eager"}, 1e-4),  # the penalty runs eager
    ("vae", {"compile": True, "compile_backend": "inductor"}, 1e-3),  # the real compiler, once
]


@pytest.mark.parametrize("name,over,rtol", SWITCHED)
def test_switched_run_resumes_bit_identically_with_itself(name, over, rtol, tmp_path, cpu_bf16):
    channels = 2 if name == "gvae" else 1
    data = _data(channels)
    full = _model(name, channels)
    cfg4 = _cfg(steps=4, checkpoint_every=2, sample_every=4, **over)
    train(full, data, cfg4, tmp_path / "full", progress=False)
    part = _model(name, channels)
    train(part, data, _cfg(steps=2, checkpoint_every=2, sample_every=4, **over),
          tmp_path / "part", progress=False)  # fmt: skip
    fresh = _model(name, channels, seed=123)  # everything must come from the checkpoint
    summary = train(fresh, data, cfg4, tmp_path / "part", resume=True, progress=False)
    assert summary["steps_run"] == 2
    a, b = _state(fresh), _state(full)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # and the switch changed the trajectory's arithmetic, or the test would prove nothing
    plain = _model(name, channels)
    train(plain, data, _cfg(steps=4, checkpoint_every=2, sample_every=4), tmp_path / "plain",
          progress=False)  # fmt: skip
    if over.get("compile_backend") != "aot_eager":  # aot_eager runs the same eager kernels
        assert any(not torch.equal(v, b[k]) for k, v in _state(plain).items())
    if rtol is None:
        return
    # ... by no more than the stated tolerance: the same trajectory, statistically
    eager, switched = _losses(tmp_path / "plain"), _losses(tmp_path / "full")
    assert eager.keys() == switched.keys()
    for term in eager:
        got, want = torch.tensor(switched[term]), torch.tensor(eager[term])
        assert torch.allclose(got, want, rtol=rtol, atol=rtol), (term, got, want)


def test_resume_refuses_another_precision_or_compiler(tmp_path):
    data = _data(1)
    train(_model("vae", 1), data, _cfg(steps=1), tmp_path, progress=False)
    for over in ({"precision": "fp32"}, {"compile": True}):
        with pytest.raises(ValueError, match="changed train settings"):
            train(_model("vae", 1), data, _cfg(steps=2, **over), tmp_path, resume=True,
                  progress=False)  # fmt: skip


def test_precision_is_resolved_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert speed.resolve_precision("auto", cpu) == "fp32"
    assert speed.resolve_precision("auto", cuda) == "bf16"
    assert speed.resolve_precision("fp32", cuda) == "fp32"
    monkeypatch.setattr(speed, "native_bf16", lambda device: True)
    assert speed.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(speed, "native_bf16", lambda device: False)
    with pytest.warns(RuntimeWarning, match="train.precision: bf16 .* training in fp32"):
        assert speed.resolve_precision("bf16", cpu) == "fp32"
    with pytest.raises(ValueError, match="segment.precision"):
        speed.resolve_precision("fp16", cpu, "segment.precision")


def test_bf16_falls_back_to_fp32_without_native_bf16(monkeypatch, tmp_path):
    """On a CPU without bf16 the run is the fp32 run, bit for bit, and says so."""
    monkeypatch.setattr(speed, "native_bf16", lambda device: False)
    data = _data(1)
    fp32, bf16 = _model("vae", 1), _model("vae", 1)
    train(fp32, data, _cfg(steps=2), tmp_path / "a", progress=False)
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        train(bf16, data, _cfg(steps=2, precision="bf16"), tmp_path / "b", progress=False)
    assert all(torch.equal(v, fp32.state_dict()[k]) for k, v in bf16.state_dict().items())


def test_native_bf16_is_a_run_time_check():
    got = speed.native_bf16(torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert got == bool(expected)
