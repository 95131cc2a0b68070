"""Params section of the DICOM export of synthetic sets (``gvae export``).

Registered in ``pipeline.params.loader.SECTIONS`` as ``export``. The identifiers a viewer shows
(patient
name and ID, descriptions) are validated to say SYNTHETIC, so that no configuration can make an
exported set look like a real patient's study.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from common.frozen import Frozen
from pipeline.params.quality import MemorizationParams

# DICOM AE titles: at most 16 characters of the default repertoire, no backslash or control
# characters (PS3.5 6.2, VR AE); leading/trailing spaces are not significant, so none here.
AE_TITLE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")


class WindowPreset(Frozen):
    """One VOI window the viewer offers (Window Center/Width + its explanation), in HU."""

    name: str = Field(min_length=1, max_length=64)
    level: float
    width: float = Field(gt=1)  # PS3.3 C.11.2.1.2: Window Width shall be >= 1

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        if "\\" in v or not v.isprintable():
            raise ValueError(f"window name must be printable text without '\\', got {v!r}")
        return v


def _must_say_synthetic(v: str) -> str:
    if "SYNTHETIC" not in v.upper():
        raise ValueError(f"must contain the word SYNTHETIC so nobody takes it for real, got {v!r}")
    return v


class PlausibilityParams(Frozen):
    """The plausibility gate of the export (``pipeline.export.plausibility``): masks no clinician
    should be shown as pancreas."""

    # refuse: the set is meant to carry pancreas, an empty mask is a failed sample; keep: empty
    # masks are pancreas-free negatives (as `generate.empty: keep` keeps them) and pass.
    empty: Literal["refuse", "keep"] = "refuse"
    # A mask covering more than this share of the image is refused whatever the real masks say
    # (the largest real Pancreas-CT mask covers 7.8% of a 200 mm field of view).
    max_share: float = Field(0.2, gt=0, le=1)
    # Real range widened both ways: areas in [min / slack, max * slack] of the real masks'.
    area_slack: float = Field(1.5, ge=1)
    # Components allowed above the real masks' maximum (8-connected, as `generate` counts).
    extra_components: int = Field(1, ge=0)


class ExportParams(Frozen):
    """Which synthetic slices are exported, how they are labelled, and how they are delivered."""

    n: int = Field(16, ge=1, description="slices per export set (`gvae export --n` overrides)")
    # PN: family^given. A name no registration desk would issue to a person.
    patient_name: str = Field("SYNTHETIC^NOT A PATIENT", max_length=64)
    # Followed by 10 hex digits derived from the new Study Instance UID: one patient per set.
    patient_id_prefix: str = Field("SYNTHETIC-", max_length=48)
    study_description: str = Field(
        "SYNTHETIC CT - generative model - not for diagnosis", max_length=64
    )
    series_description: str = Field("SYNTHETIC CT slices (independent 2D samples)", max_length=64)
    seg_series_description: str = Field("SYNTHETIC pancreas masks", max_length=64)
    # Abdominal presets; the first is the one a viewer applies on opening. HU outside the
    # training window (slices.window) were clipped before training and cannot be recovered.
    windows: tuple[WindowPreset, ...] = (
        WindowPreset(name="ABDOMEN", level=40.0, width=400.0),
        WindowPreset(name="LIVER", level=30.0, width=150.0),
    )
    calling_aet: str = "GVAE_EXPORT"
    called_aet: str = "ANY-SCP"
    # Seconds. connect: TCP connect; acse: association set-up/release; dimse: one C-STORE reply.
    connect_timeout_s: float = Field(10.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    # The privacy gate (pipeline.augment.quality.memorization) with the same defaults as ct_quality.
    memorization: MemorizationParams = MemorizationParams()
    batch_size: int = Field(256, ge=1, description="distance block of the near-copy check")
    # The masks' plausibility gate (pipeline.export.plausibility).
    plausibility: PlausibilityParams = PlausibilityParams()
    contact_sheet_columns: int = Field(4, ge=1)
    # Opacity of the mask fill on the contact sheet: a whole-image mask has no outline to draw.
    contact_sheet_fill: float = Field(0.35, ge=0, le=1)

    @field_validator(
        "patient_name",
        "patient_id_prefix",
        "study_description",
        "series_description",
        "seg_series_description",
    )
    @classmethod
    def _synthetic(cls, v: str) -> str:
        return _must_say_synthetic(v)

    @field_validator("patient_name")
    @classmethod
    def _person_name(cls, v: str) -> str:
        if v.count("^") > 4 or "\\" in v or "=" in v:
            raise ValueError(f"not a single-valued DICOM person name (family^given...), got {v!r}")
        return v

    @field_validator("calling_aet", "called_aet")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        if not AE_TITLE.match(v):
            raise ValueError(f"not a DICOM AE title (1-16 printable characters, no '\\'): {v!r}")
        return v

    @field_validator("windows")
    @classmethod
    def _some_window(cls, v: tuple[WindowPreset, ...]) -> tuple[WindowPreset, ...]:
        if not v:
            raise ValueError("need at least one window preset")
        return v
