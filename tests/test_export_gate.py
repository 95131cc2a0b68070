"""The plausibility gate of ``gvae export``: planted implausible masks (whole image, empty,
oversized, scattered) are refused with the right reason counts, ``--allow-implausible`` exports
them marked inside the DICOM files, the real Pancreas-CT masks of the data mirror pass, and the
contact sheet shows a mask's extent, not only its outline.

Real data: Roth et al. 2016, doi:10.7937/K9/TCIA.2016.tNB1kqBU (CC BY 3.0).
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import yaml

from pipeline.cli import main
from pipeline.export.marks import marked_description
from pipeline.export.plausibility import REASONS, plausibility_gate, real_ranges
from pipeline.io.contact_sheet import Panel, render_contact_sheet
from pipeline.io.shards import load_slices
from pipeline.params.export import PlausibilityParams

from .conftest import REPO
from .ct_fixtures import toy_pairs, write_toy_slices
from .export_fixtures import write_synthetic_set
from .test_export import SPLITS

S = 32
# Draw -> the reason the gate must give; every other draw is a plausible blob.
PLANTED = {1: "covers_image", 3: "empty", 5: "area", 7: "components"}


def _planted_masks(mask: np.ndarray) -> np.ndarray:
    """``mask`` (N, 1, S, S) with the masks of ``PLANTED`` replaced (a copy)."""
    out = mask.copy()
    r, c = np.mgrid[:S, :S]
    out[1, 0] = 1  # the whole image: no outline, 100 % "pancreas"
    out[3, 0] = 0  # nothing, in a set meant to carry pancreas
    # A disc over 18.8 % of the image: under max_share (20 %) but 2.4 times the largest real
    # (toy training) mask, beyond area_slack 1.5.
    out[5, 0] = (r - 16) ** 2 + (c - 16) ** 2 < 64
    out[7, 0] = 0  # four separate 3x3 specks: a real-sized area in 4 pieces (real: 1)
    for y, x in ((4, 4), (4, 24), (24, 4), (24, 24)):
        out[7, 0, y : y + 3, x : x + 3] = 1
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Toy training slices and a synthetic set of 10 draws with the ``PLANTED`` masks."""
    root = tmp_path_factory.mktemp("gate")
    slices = write_toy_slices(root / "slices", SPLITS, per_case=6, size=S)
    image, mask = toy_pairs(10, S, seed=99)
    syn = write_synthetic_set(root / "syn", image, _planted_masks(mask), trained_on=SPLITS["train"])
    return {"root": root, "slices": slices, "syn": syn}


def _export(planted, out, *extra: str) -> dict:
    args = ["export", "--synthetic", str(planted["syn"]), "--slices", str(planted["slices"])]
    assert main([*args, "--out", str(out), *extra]) == 0
    return json.loads((out / "receipt.json").read_text())


def test_planted_masks_are_refused_with_their_reasons(planted, tmp_path, capsys):
    receipt = _export(planted, tmp_path / "out", "--n", "5")
    said = capsys.readouterr().out
    gate = receipt["plausibility_gate"]
    assert {r["draw"]: r["reason"] for r in gate["refused"]} == PLANTED
    assert gate["refused_by_reason"] == dict.fromkeys(REASONS, 1)
    assert gate["exported_by_reason"] == dict.fromkeys(REASONS, 0)
    assert gate["real_masks"]["masks"] == 12 and gate["real_masks"]["components"] == [1, 1]
    assert gate["note"] is None and not gate["allow_implausible"]
    # Draw 4's image happens to lie near a toy training slice: the near-copy gate takes it.
    assert [r["draw"] for r in receipt["near_copy_gate"]["refused"]] == [4]
    images = [r for r in receipt["instances"] if r["kind"] == "image"]
    assert [r["draw"] for r in images] == [0, 2, 6, 8, 9]
    assert not any(r["implausible"] for r in receipt["instances"])
    assert all(0 < r["mask_share"] < 0.1 and r["mask_components"] == 1 for r in images)
    assert "refused 4 slices whose masks are no plausible pancreas" in said
    assert "draw 1 (covers_image: 100.0% of the image, over the 20% limit)" in said
    # Nothing in the files says implausible: nothing implausible went out.
    for row in receipt["instances"]:
        ds = pydicom.dcmread(tmp_path / "out" / row["file"])
        assert "IMPLAUSIBLE" not in ds.ImageComments + ds.SeriesDescription


def test_allow_implausible_exports_them_marked_in_the_dicom(planted, tmp_path, capsys):
    out = tmp_path / "out"
    receipt = _export(planted, out, "--n", "8", "--allow-implausible")  # draws 0..8 but 4
    assert "exporting 4 implausible masks because of --allow-implausible" in capsys.readouterr().out
    gate = receipt["plausibility_gate"]
    assert gate["refused"] == [] and gate["exported_by_reason"] == dict.fromkeys(REASONS, 1)
    for row in receipt["instances"]:
        ds = pydicom.dcmread(out / row["file"])
        assert row["implausible"] == PLANTED.get(row["draw"])
        # Every instance of every series: the series description warns first, still SYNTHETIC.
        assert ds.SeriesDescription.startswith("[IMPLAUSIBLE MASKS] SYNTHETIC")
        assert len(ds.SeriesDescription) <= 64
        comments = ds.ImageComments
        assert comments.startswith("SYNTHETIC: not an image of any real patient")
        if row["draw"] in PLANTED:  # the image and its SEG both say what is wrong
            assert "WARNING: IMPLAUSIBLE pancreas mask (" + PLANTED[row["draw"]] in comments
            assert "--allow-implausible" in comments
        else:
            assert "WARNING" not in comments


def test_empty_masks_pass_as_negatives_when_the_set_carries_them(planted, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["export"]["plausibility"]["empty"] = "keep"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    receipt = _export(planted, out, "--params", str(params), "--n", "3")
    assert [r["draw"] for r in receipt["plausibility_gate"]["refused"]] == [1]
    seg = next(r for r in receipt["instances"] if r["kind"] == "segmentation" and r["draw"] == 3)
    assert seg["implausible"] is None and seg["mask_share"] == 0
    assert not pydicom.dcmread(out / seg["file"]).pixel_array.any()  # an empty SEG frame


def test_real_masks_pass_and_set_the_range(real_pair_slices):
    """The unseen patients' real masks (val and test) pass against the train split's range;
    the planted masks fail against it for the same reasons as against the toy range."""
    train = load_slices(real_pair_slices, "train")[1]
    unseen = np.concatenate([load_slices(real_pair_slices, s)[1] for s in ("val", "test")])
    assert len(unseen) == 162
    ranges = real_ranges(train)
    # 231 non-empty of 233 training masks, 0.2 %..7.8 % of a 200 mm field, 1..3 components.
    assert ranges.masks == 231 and ranges.components == (1, 3)
    assert 0.001 < ranges.share[0] < 0.003 and 0.07 < ranges.share[1] < 0.08
    params = PlausibilityParams()
    result = plausibility_gate(unseen, ranges, params)
    assert result.counts() == dict.fromkeys(REASONS, 0), result.counts()
    # Planted on the real grid (64 px): whole image, empty, a disc twice the largest real area
    # (under max_share), five specks of a real-sized area in all.
    r, c = np.mgrid[:64, :64]
    odd = np.zeros((4, 1, 64, 64), np.uint8)
    odd[0] = 1
    odd[2, 0] = (r - 32) ** 2 + (c - 32) ** 2 < 2 * ranges.share[1] * 64**2 / np.pi
    for y in range(4, 64, 12):
        odd[3, 0, y : y + 2, 4:6] = 1
    got = plausibility_gate(odd, ranges, params).reasons.tolist()
    assert got == ["covers_image", "empty", "area", "components"]


def test_without_real_masks_only_the_reference_free_checks_run(tmp_path):
    odd = np.zeros((3, 1, 8, 8), np.uint8)
    odd[0] = 1
    odd[2, 0, :2, :2] = 1  # tiny, but there is no real range to say so
    result = plausibility_gate(odd, None, PlausibilityParams())
    assert result.reasons.tolist() == ["covers_image", "empty", ""]
    with pytest.raises(ValueError, match="none of the 3 real training masks"):
        real_ranges(np.zeros((3, 1, 8, 8)))


def test_marked_description_fits_lo_and_keeps_synthetic():
    kinds = ["near_copy", "implausible"]
    short = marked_description("SYNTHETIC CT", kinds)
    assert short == "[NEAR-COPIES, IMPLAUSIBLE MASKS] SYNTHETIC CT"
    long = marked_description("SYNTHETIC CT slices (independent 2D samples) of a model", kinds)
    assert len(long) == 64 and long.startswith("[NEAR-COPIES, IMPLAUSIBLE MASKS] SYNTHETIC")
    tail = marked_description("CT slices, independent 2D samples of a model, all SYNTHETIC", kinds)
    assert tail == "[NEAR-COPIES, IMPLAUSIBLE MASKS] SYNTHETIC"
    assert marked_description("SYNTHETIC CT", []) == "SYNTHETIC CT"


def _redness(fig) -> float:
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=float)
    return float((rgba[..., 0] - rgba[..., 1]).mean())


def test_contact_sheet_fills_masks_so_a_whole_image_mask_shows():
    image = np.zeros((16, 16), np.float32)
    whole = Panel(image, np.ones((16, 16), np.uint8), "whole")
    none = Panel(image, np.zeros((16, 16), np.uint8), "none")
    # Outlines alone: a mask over the whole image has no edge, it looks like no mask.
    assert _redness(render_contact_sheet([whole], 1)) == _redness(render_contact_sheet([none], 1))
    filled = _redness(render_contact_sheet([whole], 1, fill=0.35))
    assert filled > _redness(render_contact_sheet([none], 1, fill=0.35)) + 10
