"""The comparison table keeps our numbers and the paper's in separate columns."""

from __future__ import annotations

import json

import numpy as np

from models.grid import tile
from pipeline.stages.tables import PAPER_COLUMNS, build_table, run


def _metrics(model: str, mmd: float) -> dict:
    return {
        "model": model,
        "mmd_x1e4": mmd,
        "fid": 3.0,
        "class_entropy": 2.2,
        "precision": 0.8,
        "recall": 0.7,
        "ms_ssim": 0.2,
        "image_entropy": 0.1,
    }


def test_table_has_every_row_and_paper_columns_apart():
    md, csv_text = build_table(
        [_metrics("vae", 12.5), _metrics("gvae", 3.25)], {"gvae": {"mmd_x1e4": 1.5}}
    )
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "model" and header[-len(PAPER_COLUMNS) :] == PAPER_COLUMNS
    gvae = [c.strip() for c in lines[3].strip("|").split("|")]
    assert gvae[0] == "gvae" and gvae[1] == "3.25"
    assert gvae[header.index("paper_mmd_x1e4")] == "1.5"
    vae = [c.strip() for c in lines[2].strip("|").split("|")]
    assert vae[header.index("paper_mmd_x1e4")] == ""  # unknown stays empty, never invented
    assert vae[header.index("ELBO (nats)")] == ""  # no encoder metric for a missing value
    assert csv_text.splitlines()[0].split(",")[0] == "model"


def test_run_writes_table_csv_and_figure(tmp_path):
    evals, samples = tmp_path / "eval", tmp_path / "samples"
    for i, name in enumerate(["vae", "gvae"]):
        (evals / name).mkdir(parents=True)
        (evals / name / "metrics.json").write_text(json.dumps(_metrics(name, float(i))))
        (samples / name).mkdir(parents=True)
        np.savez(samples / name / "samples.npz", images=np.zeros((36, 1, 16, 16), np.float32))
    (evals / "real").mkdir()
    (evals / "real" / "metrics.json").write_text(json.dumps(_metrics("real (train vs test)", 0)))
    md = run("mnist", evals, samples, ["vae", "gvae"], tmp_path / "out")
    assert md.splitlines()[2].startswith("| real (train vs test) |")
    assert (tmp_path / "out" / "table.csv").read_text().count("\n") == 4
    assert (tmp_path / "out" / "samples.png").stat().st_size > 1000


def test_tile_overlays_mask_for_two_channels():
    img = -np.ones((1, 2, 4, 4), np.float32)
    img[0, 1, 1, 1] = 1.0
    out = tile(img, nrow=1, pad=0)
    assert out.shape == (4, 4, 3)
    assert out[1, 1, 0] > out[1, 1, 1]  # red inside the mask
    assert out[0, 0].tolist() == [0, 0, 0]
