"""NaN and infinity become ``null`` in every JSON metrics file (one helper, three writers)."""

from __future__ import annotations

import json
import math

from pipeline.augment.quality.evaluate import _json_safe
from pipeline.augment.segment.results import COLUMNS, metrics_json
from pipeline.io.tables import json_number


def test_json_number_nulls_what_json_cannot_hold():
    assert json_number(math.nan) is None
    assert json_number(math.inf) is None and json_number(-math.inf) is None
    assert json_number(None) is None
    assert json_number(0.25) == 0.25 and json_number(0) == 0 and json_number("n/a") == "n/a"


def test_metrics_files_are_strict_json():
    row = {k: math.nan for k in COLUMNS}
    row.update(condition="real", fraction=1.0, dice=0.5)
    seg = metrics_json([row])
    assert seg["f1.0"]["real"]["dice"] == 0.5
    assert seg["f1.0"]["real"]["dice_lo"] is None
    quality = _json_safe({"fid": 12.5, "hu_mean": math.nan, "mmd": math.inf})
    assert quality == {"fid": 12.5, "hu_mean": None, "mmd": None}
    json.dumps([seg, quality], allow_nan=False)  # raises on any NaN or infinity left
