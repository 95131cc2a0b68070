"""Latent traversal grids (Higgins et al. 2017; Chen et al. 2018): the core and the sample stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from models.eval.traversal import kl_per_dim, top_dims, traversal, traversal_codes
from pipeline.cli import main
from pipeline.params.sanity import TraversalParams
from pipeline.sanity.sample import traversal_grid

from .conftest import REPO


class LinearStub(nn.Module):
    """decode(z) = W z + b as a (1, 4, 4) image; encode(x) = (first 5 pixels, log-variance 0)."""

    latent_dim = 5

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dec = nn.Linear(5, 16)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z).view(-1, 1, 4, 4)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = x.flatten(1)[:, :5]
        return mu, torch.zeros_like(mu)


def test_codes_differ_from_the_anchor_only_in_the_varied_dimension():
    z0 = torch.arange(6.0)
    codes = traversal_codes(z0, [2, 5], torch.tensor([-1.0, 0.5, 7.0]))
    assert codes.shape == (6, 6)
    changed = codes != z0
    assert int(changed.sum()) == 6 and changed[:3, 2].all() and changed[3:, 5].all()
    assert codes[:3, 2].tolist() == [-1.0, 0.5, 7.0]
    assert z0.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # the input is left alone
    with pytest.raises(ValueError, match=r"\[7\] out of range for a 6-d code"):
        traversal_codes(z0, [1, 7], torch.zeros(2))


def test_linear_decoder_changes_only_along_the_varied_dimension():
    model = LinearStub()
    z0, dims, values = torch.randn(5), [3, 0], torch.linspace(-3, 3, 4)
    images = traversal(model, z0, dims, values, batch_size=3)
    assert images.shape == (len(dims) * len(values), 1, 4, 4)
    weight = model.dec.weight.detach()  # (16, latent)
    for i, d in enumerate(dims):
        row = images[i * 4 : (i + 1) * 4].flatten(1)  # (K, 16)
        # Linear in z: moving along d alone adds (v - v0) times column d of W, nothing else.
        expected = (values - values[0])[:, None] * weight[:, d][None, :]
        torch.testing.assert_close(row - row[0], expected)


def test_kl_per_dim_is_the_closed_form_and_ranks_the_dimensions():
    x = torch.zeros(4, 1, 4, 4)
    x.view(4, -1)[:, 1] = 2.0
    x.view(4, -1)[:, 3] = 1.0
    kl = kl_per_dim(LinearStub(), x, batch_size=3)  # 0.5 mu^2 with log-variance 0
    torch.testing.assert_close(kl, torch.tensor([0.0, 2.0, 0.0, 0.5, 0.0]))
    assert top_dims(kl, 2) == [1, 3]
    assert top_dims(kl, 99) == [1, 3, 0, 2, 4]  # at most latent; ties by index


def test_traversal_grid_anchors_and_rejects_a_missing_anchor_image():
    test = torch.randn(8, 1, 4, 4)
    cfg = TraversalParams(enabled=True, dims=2, steps=3, anchor="zero", kl_images=5)
    images, info = traversal_grid(LinearStub(), test, cfg, seed=0)
    assert images.shape == (6, 1, 4, 4) and info["anchor_image"] is None
    assert info["values"] == [-3.0, 0.0, 3.0] and info["kl_images"] == 5
    assert info["kl_nats"] == sorted(info["kl_nats"], reverse=True)
    bad = TraversalParams(enabled=True, anchor_image=8)
    with pytest.raises(ValueError, match="anchor_image 8 is beyond the 8 test images"):
        traversal_grid(LinearStub(), test, bad, seed=0)
    with pytest.raises(ValueError, match="low < high"):
        TraversalParams(range=(3.0, -3.0))


def _setup(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    x = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 24)
    np.savez(data / "data.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(steps=1, batch_size=4, checkpoint_every=1, sample_every=1)
    raw["evaluate"].update(n_samples=10)
    raw["evaluate"]["traversal"] = {"enabled": True, "dims": 3, "steps": 4, "kl_images": 6}
    for name in ("beta_vae", "beta_tcvae", "wgan_gp"):
        raw["models"][name]["model"].update(latent_dim=4, width=8, max_width=16)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    return params, data


def _train_and_sample(tmp_path, model: str):
    params, data = _setup(tmp_path)
    run_dir, out = tmp_path / "run", tmp_path / "samples"
    common = ["--params", str(params), "--dataset", "mnist", "--data", str(data)]
    train = ["train", *common, "--model", model, "--out", str(run_dir), "--no-progress"]
    assert main(train) == 0
    assert main(["sample", *common, "--run", str(run_dir), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("model", ["beta_vae", "beta_tcvae"])
def test_sample_stage_writes_the_traversal_grid(tmp_path, model):
    out = _train_and_sample(tmp_path, model)
    info = json.loads((out / "traversal.json").read_text())
    assert len(info["dims"]) == 3 and len(set(info["dims"])) == 3
    assert info["values"] == [-3.0, -1.0, 1.0, 3.0] and info["anchor"] == "test_image"
    # 3 rows x 4 columns of 32 px tiles with 1 px borders, upscaled twice by save_grid.
    assert Image.open(out / "traversal.png").size == (2 * (4 * 33 + 1), 2 * (3 * 33 + 1))
    assert (out / "grid.png").is_file() and (out / "samples.npz").is_file()


def test_sample_stage_notes_a_model_without_encoder(tmp_path, capsys):
    out = _train_and_sample(tmp_path, "wgan_gp")
    assert "has no encoder" in json.loads((out / "traversal.json").read_text())["skipped"]
    assert not (out / "traversal.png").exists()
    assert "traversal skipped: wgan_gp has no encoder" in capsys.readouterr().out
