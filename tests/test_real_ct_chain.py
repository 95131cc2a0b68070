"""The real Pancreas-CT patient through slices -> CT training -> generate, with tiny settings.

Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0). The one mirrored patient
is the whole training split here; what is checked is that real DICOM-derived volumes flow through
every CT stage into labelled synthetic pairs of the slices' geometry.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.cohort import ingest
from pipeline.io.shards import load_slices, read_index
from pipeline.params.loader import IngestParams

from .conftest import REPO

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
CASE = "PANCREAS_0001"


def test_real_volume_slices_train_generate(real_data_dir, tmp_path):
    src = real_data_dir / "pancreas_ct"
    volumes = tmp_path / "volumes"
    rows = ingest.run(
        IngestParams(workers=1),
        src / "Pancreas-CT",
        src / "TCIA_pancreas_labels-02-05-2017",
        volumes,
    )
    assert [r["status"] for r in rows] == ["ok"]

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "cpu"
    raw["slices"].update(size=32, negative_fraction=0.05, shard_size=64)
    raw["slices"]["split"] = {"cases": {"train": [CASE], "val": [], "test": []}}
    raw["ct"]["train"] = {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "sample_every": 2}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    slices = tmp_path / "slices"
    assert (
        main(["slices", "--params", str(params), "--input", str(volumes), "--out", str(slices)])
        == 0
    )
    image, mask, meta = load_slices(slices, "train")
    index = read_index(slices)
    # The label covers 71 of the 240 slices; every one of them is kept, plus a few negatives.
    positive = int(mask.reshape(len(mask), -1).any(axis=1).sum())
    assert 60 <= positive <= 71 and len(image) > positive
    assert index["roi"]["from_cases"] == [CASE]

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--params",
                str(params),
                "--model",
                "gvae",
                "--dataset",
                "pancreas",
                "--data",
                str(slices),
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((run / "data.json").read_text())["cases"] == [CASE]
    syn = tmp_path / "syn"
    assert (
        main(
            ["generate", "--params", str(params), "--run", str(run), "--out", str(syn), "--n", "8"]
        )
        == 0
    )
    s_image, s_mask, s_meta = load_slices(syn, "synthetic")
    assert s_image.shape[1:] == (1, 32, 32) and len(s_image) <= 8
    assert np.abs(s_image).max() <= 1.0 and set(np.unique(s_mask)) <= {0, 1}
    assert s_meta["pixel_mm"] == index["pixel_mm"] and s_meta["window"] == index["window"]
    summary = json.loads((syn / "summary.json").read_text())
    assert sum(summary["drawn_by_kind"].values()) == summary["drawn"] >= summary["kept"]
