"""The in-domain classifier: output contract, determinism, checkpoint, stage, real MNIST."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.eval.classifier import (
    MnistClassifier,
    accuracy,
    features,
    load_classifier,
    predict_proba,
    save_classifier,
    train_classifier,
)
from pipeline.cli import main as cli_main
from pipeline.params import loader as config
from pipeline.params.sanity import ClassifierParams
from pipeline.sanity.data import load_mnist_split

TINY = {"steps": 60, "batch_size": 32, "lr": 3e-3, "seed": 0, "channels": (4, 8), "feature_dim": 16}


def _synthetic(n, seed=0):
    """Class c = a bright 6x6 square in cell c of a 4x3 grid on a noisy dark background."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = -1 + 0.3 * torch.rand((n, 1, 32, 32), generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = 2 + 8 * (c // 4), 2 + 8 * (c % 4)
        x[i, 0, r : r + 6, col : col + 6] = 1.0
    return x, y


def test_output_contract():
    model = MnistClassifier()
    x, _ = _synthetic(7)
    f, p = features(model, x, batch_size=3), predict_proba(model, x, batch_size=3)
    assert f.shape == (7, 128) and (f >= 0).all()
    assert p.shape == (7, 10)
    assert torch.allclose(p.sum(1), torch.ones(7), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        features(model, torch.zeros(2, 1, 28, 28))


def test_learns_separable_classes_and_is_deterministic():
    x, y = _synthetic(200)
    a = train_classifier(x, y, **TINY)
    b = train_classifier(x, y, **TINY)
    c = train_classifier(x, y, **{**TINY, "seed": 1})
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    xt, yt = _synthetic(100, seed=1)
    assert accuracy(a, xt, yt) > 0.95


def test_checkpoint_round_trip(tmp_path):
    x, y = _synthetic(100)
    model = train_classifier(x, y, **{**TINY, "steps": 5})
    save_classifier(tmp_path / "c.pt", model, {"note": 1})
    loaded = load_classifier(tmp_path / "c.pt")
    assert loaded.config == {"channels": [4, 8], "feature_dim": 16}
    assert torch.equal(predict_proba(loaded, x), predict_proba(model, x))
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: not a classifier checkpoint"):
        load_classifier(tmp_path / "bad.pt")


def _register(monkeypatch, tmp_path, section: str) -> str:
    monkeypatch.setitem(config.SECTIONS, "classifier", ClassifierParams)
    p = tmp_path / "params.yaml"
    p.write_text(section)
    return str(p)


def test_stage_writes_checkpoint_and_metrics(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    # Synthetic images back in the stage's uint8 28x28 layout.
    x, y = _synthetic(300)
    u8 = ((x[:, 0, 2:30, 2:30] + 1) * 127.5).round().to(torch.uint8).numpy()
    np.savez(data / "data.npz", x_train=u8[:200], y_train=y[:200].numpy().astype(np.uint8),
             x_test=u8[200:], y_test=y[200:].numpy().astype(np.uint8))  # fmt: skip
    (data / "info.json").write_text(json.dumps({"dataset": "synthetic"}))
    params = _register(
        monkeypatch,
        tmp_path,
        "classifier: {steps: 100, batch_size: 32, lr: 0.003, channels: [4, 8], feature_dim: 16}\n",
    )
    out = tmp_path / "out"
    assert cli_main(["classifier", "--params", params, "--data", str(data), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and metrics["test_accuracy"] > 0.95
    ckpt = torch.load(out / "classifier.pt", weights_only=True)
    assert ckpt["params"]["steps"] == 100 and ckpt["dataset"] == "synthetic"
    xt, yt = load_mnist_split(data, "test")
    model = load_classifier(out / "classifier.pt")
    acc = accuracy(model, torch.from_numpy(xt), torch.from_numpy(yt))
    assert acc == pytest.approx(metrics["test_accuracy"])


def test_stage_missing_data_is_a_clean_error(tmp_path, monkeypatch, capsys):
    params = _register(monkeypatch, tmp_path, "classifier: {}\n")
    argv = ["classifier", "--params", params, "--data", str(tmp_path / "none"), "--out", "x"]
    assert cli_main(argv) == 2
    assert "data.npz" in capsys.readouterr().err


def test_params_reject_unknown_keys():
    with pytest.raises(ValueError, match="stpes"):
        ClassifierParams(stpes=10)


@pytest.mark.real_data
def test_real_mnist_short_training(real_data_dir):
    """A third of the default budget already separates real MNIST digits well."""
    from pipeline.sanity.data import fetch_dataset, to_model_images

    arrays, _ = fetch_dataset("mnist", real_data_dir)
    x = torch.from_numpy(to_model_images(arrays["x_train"][:20000]))
    y = torch.from_numpy(arrays["y_train"][:20000].astype(np.int64))
    xt = torch.from_numpy(to_model_images(arrays["x_test"]))
    yt = torch.from_numpy(arrays["y_test"].astype(np.int64))
    model = train_classifier(x, y, **ClassifierParams(steps=400).model_dump())
    assert accuracy(model, xt, yt) > 0.96


def test_thread_setting_is_restored():
    from models.eval.classifier import num_threads

    before = torch.get_num_threads()
    with num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
