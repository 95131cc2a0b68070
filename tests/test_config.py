"""params.yaml is validated once, strictly: unknown keys name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.config import ParamsError, SlicesParams, SplitParams, load_params, load_section

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params["slices"].window.level == 40
    assert params["slices"].window.width == 400


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((REPO / "params.yaml").read_text() + "\nslcies: {size: 32}\n")
    with pytest.raises(ParamsError, match=r"params\.yaml.*'slcies'"):
        load_params(p)


def test_unknown_nested_key_names_dotted_path(tmp_path):
    p = tmp_path / "custom.yaml"
    p.write_text("slices:\n  window: {level: 40, widht: 400}\n")
    with pytest.raises(ParamsError) as exc:
        load_section(p, "slices")
    assert "custom.yaml" in str(exc.value)
    assert "slices.window.widht" in str(exc.value)


def test_bad_value_is_rejected(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("slices:\n  size: 48\n")
    with pytest.raises(ParamsError, match="power of two"):
        load_section(p, "slices")


def test_params_are_frozen():
    s = SlicesParams()
    with pytest.raises(ValidationError, match="frozen"):
        s.size = 128  # type: ignore[misc]


def test_split_fractions_and_overlap():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitParams(train=0.5, val=0.2, test=0.2)
    with pytest.raises(ValueError, match="both train and test"):
        SplitParams(cases={"train": ["A", "B"], "test": ["B"]})


def test_cli_reports_params_error(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  wrokers: 3\n")
    code = main(
        [
            "ingest",
            "--params",
            str(p),
            "--images",
            str(tmp_path),
            "--labels",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "ingest.wrokers" in err and str(p) in err
