"""The series choice rule of ``pipeline/io/dicom_select.py`` on summaries and tiny series:
deterministic tie-breaks, overrides, and a reason for every skipped series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.io.dicom_read import SeriesError, read_series
from pipeline.io.dicom_select import SeriesSummary, choose_series
from pipeline.io.dicom_write import SeriesHeader, write_ct_series


def summary(uid, slices, step, number=None, description="", reason=None) -> SeriesSummary:
    files = tuple(Path(f"{uid}-{i}") for i in range(slices))
    return SeriesSummary(uid, description, number, files, step, reason)


@pytest.mark.parametrize(
    "series,expected",
    [
        ([summary("1.1", 240, 1.0), summary("1.2", 120, 2.0)], "1.1"),  # thinnest wins
        ([summary("1.1", 100, 1.0), summary("1.2", 120, 1.004)], "1.2"),  # equal step: most slices
        ([summary("1.1", 120, 1.0, 5), summary("1.2", 120, 1.0, 3)], "1.2"),  # then SeriesNumber
        ([summary("1.2", 120, 1.0), summary("1.1", 120, 1.0)], "1.1"),  # then UID, any order
        ([summary("1.1", 240, 0.5, reason="localizer"), summary("1.2", 9, 3.0)], "1.2"),
    ],
)
def test_choice_rule(series, expected):
    for ordering in (series, series[::-1]):  # the input order never matters
        chosen, skipped = choose_series(ordering)
        assert chosen.uid == expected
        assert all(s.reason for s in skipped) and len(skipped) == len(series) - 1


def test_description_override_and_its_errors():
    series = [
        summary("1.1", 240, 1.0, description="Abdomen 1.0"),
        summary("1.2", 48, 5.0, 2, "Abd 5mm"),
    ]
    assert choose_series(series, description=r"5\s?mm")[0].uid == "1.2"
    skipped = choose_series(series, description=r"5\s?mm")[1]
    assert "does not match" in skipped[0].reason
    with pytest.raises(ValueError, match="no usable series matches SeriesDescription /Chest/"):
        choose_series(series, description="Chest")


def test_nothing_usable_lists_every_series_with_its_reason():
    series = [summary("1.1", 2, None, reason="localizer"), summary("1.2", 1, None, reason="single")]
    with pytest.raises(ValueError, match="no usable axial CT series") as info:
        choose_series(series)
    assert "1.1 ('', 2 files): localizer" in str(info.value) and "1.2" in str(info.value)


def test_only_a_localizer_and_a_report_in_the_folder(tmp_path):
    header = SeriesHeader(patient_id="P1", pixel_spacing=(0.8, 0.7), slice_step_mm=1.5,
                          slice_thickness_mm=1.5)  # fmt: skip
    write_ct_series(tmp_path / "scout", np.zeros((2, 24, 32)), header)
    for path in sorted((tmp_path / "scout").iterdir()):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(path)
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 not an image\n")
    with pytest.raises(SeriesError, match="no usable axial CT series") as info:
        read_series(tmp_path)
    assert str(tmp_path) in str(info.value) and "localizer" in str(info.value)
    assert header.series_uid in str(info.value)
