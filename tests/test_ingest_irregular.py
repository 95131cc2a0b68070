"""Irregular stacks (gantry tilt, a non-uniform slice step) are rejected with the case, the tilt
angle or the step named (``ingest.irregular: reject``, the only rule implemented)."""

from __future__ import annotations

import math

import pydantic
import pydicom
import pytest

from pipeline.cohort import ingest
from pipeline.params.loader import IngestParams
from tests.test_ingest import make_case


def _run(tmp_path):
    (row,) = ingest.run(
        IngestParams(workers=1), tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    )
    assert row["status"] == "error" and not (tmp_path / "out" / row["case_id"]).exists()
    return row["error"]


def test_gantry_tilt_is_rejected_with_its_angle(tmp_path):
    tilt = math.radians(20.0)
    direction = (0.0, math.sin(tilt), -math.cos(tilt))  # instances run inferior, drifting in y
    make_case(tmp_path / "images", tmp_path / "labels", slice_direction=direction)
    error = _run(tmp_path)
    assert str(tmp_path / "images" / "PANCREAS_0001") in error
    assert "gantry tilt of 20.0 degrees" in error and "ingest.irregular: reject" in error


def test_non_uniform_step_is_rejected_with_the_step(tmp_path):
    case = make_case(tmp_path / "images", tmp_path / "labels", n=10)
    # Instance 6 moved 0.5 mm towards instance 7: steps 1.0 and 2.0 mm instead of 1.5 mm.
    path = case.series_dir / "1-006.dcm"
    ds = pydicom.dcmread(path)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z - 0.5]
    ds.save_as(path)
    error = _run(tmp_path)
    assert "non-uniform slice spacing" in error and "1-006.dcm" in error and "1-007.dcm" in error
    assert "step 1 mm, expected 1.5 mm" in error and "ingest.irregular: reject" in error


def test_resampling_is_not_offered_yet():
    with pytest.raises(pydantic.ValidationError, match="irregular"):
        IngestParams(irregular="resample")
