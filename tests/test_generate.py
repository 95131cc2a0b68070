"""``gvae train --dataset pancreas`` and ``gvae generate``: labelled synthetic CT pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipeline.augment.generate import generate_pairs, mask_kind, split_pair
from pipeline.cli import main
from pipeline.io.shards import load_slices
from pipeline.params.ct import GenerateParams

from .conftest import REPO
from .ct_fixtures import write_toy_slices

SPLITS = {
    "train": ["PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003", "PANCREAS_0004"],
    "val": ["PANCREAS_0005"],
    "test": ["PANCREAS_0006"],
}


def _params(tmp_path, **over):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ct"] = {
        **raw.get("ct", {}),
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "sample_every": 2, "grid": 2},
    }
    raw["generate"] = {**raw.get("generate", {}), **over}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(params, slices, out, model="vae", *extra):
    return main(
        [
            "train",
            "--params",
            str(params),
            "--model",
            model,
            "--dataset",
            "pancreas",
            "--data",
            str(slices),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def _generate(params, run, out, n=10, *extra):
    return main(
        [
            "generate",
            "--params",
            str(params),
            "--run",
            str(run),
            "--out",
            str(out),
            "--n",
            str(n),
            *extra,
        ]
    )


def test_mask_kinds():
    m = np.zeros((16, 16), np.uint8)
    assert mask_kind(m, 1.0, 4.0, 3) == "empty"
    m[2, 2] = 1
    assert mask_kind(m, 1.0, 4.0, 3) == "tiny"  # 1 mm^2 < 4 mm^2
    assert mask_kind(m, 3.0, 4.0, 3) == "ok"  # the same pixel is 9 mm^2 at 3 mm spacing
    for r, c in ((2, 8), (8, 2), (12, 12)):
        m[r, c] = 1
    assert mask_kind(m, 3.0, 4.0, 3) == "fragmented"  # 4 separate pixels
    m[3, 3] = 1  # diagonal neighbour of (2, 2): 8-connectivity joins them -> 4 components
    assert mask_kind(m, 3.0, 4.0, 4) == "ok"


def test_split_pair_thresholds_channel_one():
    x = np.array([[[[-1.5, 0.3]], [[-0.2, 0.1]]]], np.float32)  # (1, 2, 1, 2)
    image, mask = split_pair(x, threshold=0.0)
    assert image.dtype == np.float32 and image.min() >= -1.0
    assert mask.dtype == np.uint8 and mask.tolist() == [[[[0, 1]]]]
    with pytest.raises(ValueError, match="2, S, S"):
        split_pair(x[:, :1], 0.0)


class _Scripted(torch.nn.Module):
    """A fake generator whose masks cycle through ok, empty, tiny and fragmented."""

    size, name = 16, "scripted"

    def sample(self, n, generator=None):
        out = torch.full((n, 2, 16, 16), -1.0)
        out[:, 0] = 0.25
        for i in range(n):
            kind = int(torch.randint(0, 4, (1,), generator=generator))
            if kind == 0:
                out[i, 1, 4:10, 4:10] = 1.0  # ok: 36 px
            elif kind == 2:
                out[i, 1, 3, 3] = 1.0  # tiny: 1 px
            elif kind == 3:
                out[i, 1, ::4, ::4] = 1.0  # fragmented: 16 specks
        return out


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_generate_pairs_policy_and_counts(policy):
    params = GenerateParams(min_area_mm2=4.0, max_components=3, empty=policy, batch_size=8)
    got = generate_pairs(_Scripted(), 20, 1.0, params, seed=0)
    assert len(got.image) == 20 and got.drawn >= 20
    assert sum(got.counts.values()) == got.drawn
    # Drawing stops at the 20th kept sample: nothing kept-able is counted as dropped.
    assert got.counts["ok"] == got.kept_counts["ok"]
    assert got.draw_index[-1] == got.drawn - 1
    assert got.kept_counts["tiny"] == got.kept_counts["fragmented"] == 0
    assert (got.kept_counts["empty"] > 0) == (policy == "keep")
    assert sum(got.kept_counts.values()) == 20
    again = generate_pairs(_Scripted(), 20, 1.0, params, seed=0)
    np.testing.assert_array_equal(got.draw_index, again.draw_index)


def test_generate_pairs_stops_short():
    params = GenerateParams(min_area_mm2=1e6, empty="drop", max_draw_factor=2.0, batch_size=8)
    got = generate_pairs(_Scripted(), 10, 1.0, params, seed=0)  # every mask is tiny or empty
    assert len(got.image) == 0 and got.drawn == 20


def test_train_ct_then_generate(tmp_path):
    slices = write_toy_slices(tmp_path / "slices", SPLITS)
    params = _params(tmp_path)
    run = tmp_path / "run"
    assert _train(params, slices, run) == 0
    record = json.loads((run / "data.json").read_text())
    assert record["cases"] == SPLITS["train"] and record["size"] == 32
    assert _generate(params, run, tmp_path / "syn", 10) == 0
    image, mask, meta = load_slices(tmp_path / "syn", "synthetic")
    assert 0 < len(image) <= 10 and image.shape[1:] == (1, 32, 32)
    assert image.min() >= -1.0 and image.max() <= 1.0
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert set(meta["case_id"]) == {"syn-vae"} and meta["pixel_mm"] == 200.0 / 32
    summary = json.loads((tmp_path / "syn" / "summary.json").read_text())
    assert sum(summary["drawn_by_kind"].values()) == summary["drawn"]
    assert summary["kept"] == len(image)
    assert (tmp_path / "syn" / "grid.png").stat().st_size > 1000


def test_fraction_trains_on_the_segmentation_subset(tmp_path):
    from pipeline.augment.segment.experiment import training_subset
    from pipeline.params.loader import load_section

    slices = write_toy_slices(tmp_path / "slices", SPLITS)
    params = _params(tmp_path)
    assert _train(params, slices, tmp_path / "run", "vae", "--fraction", "0.5") == 0
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    seg = load_section(params, "segment")
    assert record["cases"] == training_subset(
        SPLITS["train"], 0.5, seg.subset_seed, seg.min_patients
    )
    assert set(record["cases"]) < set(SPLITS["train"])


def test_generate_bad_runs(tmp_path, capsys):
    params = _params(tmp_path)
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    out = tmp_path / "syn"
    assert _generate(params, empty_run, out) == 2
    assert "checkpoint.pt: no checkpoint" in capsys.readouterr().err
    assert not out.exists()

    # A checkpoint of another data shape: an MNIST (1-channel) run.
    data = tmp_path / "mnist"
    data.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    np.savez(data / "data.npz", x_train=x, y_train=np.zeros(16, int), x_test=x, y_test=x[:, 0, 0])
    raw = yaml.safe_load(params.read_text())
    raw["train"].update(steps=1, batch_size=4)
    params.write_text(yaml.safe_dump(raw))
    mnist_run = tmp_path / "mnist_run"
    assert (
        main(
            [
                "train",
                "--params",
                str(params),
                "--model",
                "vae",
                "--dataset",
                "mnist",
                "--data",
                str(data),
                "--out",
                str(mnist_run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert _generate(params, mnist_run, out) == 2
    assert "1-channel 32x32 data" in capsys.readouterr().err and not out.exists()

    # A CT run whose data record disagrees with its network.
    slices = write_toy_slices(tmp_path / "slices", SPLITS)
    run = tmp_path / "run"
    assert _train(params, slices, run) == 0
    record = json.loads((run / "data.json").read_text())
    (run / "data.json").write_text(json.dumps({**record, "size": 64}))
    assert _generate(params, run, out) == 2
    assert "data.json describes 64x64" in capsys.readouterr().err and not out.exists()
