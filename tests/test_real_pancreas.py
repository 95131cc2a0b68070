"""Ingest of one real TCIA Pancreas-CT patient.

Data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0).

The label/image alignment is checked by the HU statistics inside the pancreas mask (pancreatic
parenchyma is ~100 HU, sd ~30). The same check is shown to reject every flipped or transposed
label, so it really discriminates: the mean alone would not (the transpose keeps the mean).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.cohort import ingest
from pipeline.params.loader import IngestParams

pytestmark = pytest.mark.real_data

CASE = "PANCREAS_0001"


@pytest.fixture(scope="module")
def ingested(real_data_dir, tmp_path_factory):
    """One ingest run of the real patient: (manifest rows, HU array, label array, src, out)."""
    src = real_data_dir / "pancreas_ct"
    out = tmp_path_factory.mktemp("ingest_real")
    rows = ingest.run(
        IngestParams(workers=1),
        src / "Pancreas-CT",
        src / "TCIA_pancreas_labels-02-05-2017",
        out,
    )
    image = nib.load(out / CASE / "image.nii.gz")
    label = nib.load(out / CASE / "label.nii.gz")
    return {
        "rows": rows,
        "out": out,
        "src": src,
        "image": image,
        "hu": np.asanyarray(image.dataobj),
        "label": np.asanyarray(label.dataobj),
        "label_img": label,
    }


def mask_stats(hu: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    values = hu[mask > 0].astype(np.float64)
    return float(values.mean()), float(values.std())


def looks_like_pancreas(mean: float, sd: float) -> bool:
    return 98.0 <= mean <= 108.0 and sd < 40.0


def test_manifest_figures(ingested):
    (row,) = ingested["rows"]
    assert row["case_id"] == CASE and row["status"] == "ok", row
    assert row["shape"] == [512, 512, 240]
    assert row["spacing"] == [0.859375, 0.859375, 1.0]
    assert row["label_voxels"] == 78329
    assert len(row["source_sha256"]) == 64
    assert json.loads((ingested["out"] / "manifest.json").read_text()) == ingested["rows"]


def test_volumes_and_types(ingested):
    hu, label = ingested["hu"], ingested["label"]
    assert hu.dtype == np.int16 and hu.shape == (512, 512, 240)
    assert label.dtype == np.uint8 and label.shape == hu.shape
    assert int(hu.min()) == -1024 and int(hu.max()) == 2421
    assert int(np.count_nonzero(label)) == 78329


def test_affine_equals_the_real_label_affine(ingested):
    real = nib.load(ingested["src"] / "TCIA_pancreas_labels-02-05-2017" / "label0001.nii.gz")
    np.testing.assert_allclose(ingested["image"].affine, real.affine, atol=1e-6)
    np.testing.assert_allclose(ingested["label_img"].affine, real.affine, atol=1e-6)


def test_hu_inside_mask_is_pancreas(ingested):
    mean, sd = mask_stats(ingested["hu"], ingested["label"])
    assert looks_like_pancreas(mean, sd), (mean, sd)
    assert abs(mean - 102.6) < 0.5 and abs(sd - 30.9) < 0.5


@pytest.mark.parametrize(
    "name,misalign",
    [
        ("flip x", lambda m: m[::-1]),
        ("flip y", lambda m: m[:, ::-1]),
        ("flip k", lambda m: m[:, :, ::-1]),
        ("transpose x/y", lambda m: m.transpose(1, 0, 2)),
    ],
)
def test_misaligned_label_fails_the_check(ingested, name, misalign):
    mean, sd = mask_stats(ingested["hu"], misalign(ingested["label"]))
    assert not looks_like_pancreas(mean, sd), (name, mean, sd)
    assert mean < 98.0 or mean > 108.0 or sd > 50.0, (name, mean, sd)
