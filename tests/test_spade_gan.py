"""The SPADE GAN (GauGAN on MONAI's SPADENet): the one trainer and its checkpoint, and the
config refusals. Its overfit and background-context tests are in test_conditional.py."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from pydantic import ValidationError

from models.config import TrainConfig
from models.registry import build_model
from models.train.checkpoint import load_checkpoint
from models.train.trainer import train
from pipeline.errors import ParamsError
from pipeline.params.models import load_model_config

from .conftest import REPO
from .tiny_configs import SPADE_TINY

SIZE = 16


def _model(**over) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("spade_gan", {**SPADE_TINY, **over}, 2, SIZE)


def _pairs(n: int, seed: int = 0) -> torch.Tensor:
    """(image, mask) pairs: a noise image and a square mask at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, SIZE, SIZE, generator=g) * 2 - 1
    x[:, 1] = -1.0
    for k, (r, c) in enumerate(torch.randint(0, SIZE - 5, (n, 2), generator=g).tolist()):
        x[k, 1, r : r + 5, c : c + 5] = 1.0
    return x


def test_trains_through_the_trainer_and_its_checkpoint_round_trips(tmp_path):
    model = _model(context="background")
    cfg = TrainConfig(
        steps=3, batch_size=4, lr=1e-3, adam_betas=(0.0, 0.9), log_every=1, sample_every=3,
        checkpoint_every=3, device="cpu", grid=2,
    )  # fmt: skip
    summary = train(model, _pairs(8), cfg, tmp_path, progress=False)
    assert summary["steps_run"] == 3
    with open(tmp_path / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[-1]) == {"step", "adv", "fm", "kl", "total", "critic_real", "critic_fake",
                             "critic_total"}  # fmt: skip
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert type(loaded) is type(model) and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # The trainer leaves its model NHWC (channels_last); the same layout gives the same kernels.
    loaded.to(memory_format=torch.channels_last)
    pairs = _pairs(4, seed=1)
    want = model.sample(4, generator=torch.Generator().manual_seed(3), condition=pairs)
    got = loaded.sample(4, generator=torch.Generator().manual_seed(3), condition=pairs)
    assert torch.equal(got, want)


def test_context_is_refused_where_a_model_has_none(tmp_path):
    with pytest.raises(ValidationError, match="context"):
        build_model("gvae", {"context": "background"}, 2, SIZE)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["models"]["vae"]["model"]["context"] = "background"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"unknown key 'models\.vae\.model\.context'"):
        load_model_config(path, "vae")
    with pytest.raises(ValidationError, match="'none' or 'background'"):
        _model(context="foreground")


def test_geometry_too_small_for_the_networks_is_named():
    with pytest.raises(ValueError, match="too small for 2 discriminators"):
        _model(disc_layers=2)  # 4 halvings of 16 px leave 1 pixel for instance norm
    with pytest.raises(ValueError, match="halvings than num_channels"):
        _model(num_channels=[8, 8, 8, 8])
