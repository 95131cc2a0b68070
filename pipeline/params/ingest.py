"""Params section of ``gvae ingest``: DICOM series (or a NIfTI cohort) + labels -> HU volumes.

Registered in ``pipeline.params.loader.SECTIONS`` as ``ingest``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.frozen import Frozen


class SeriesChoiceParams(Frozen):
    """Overrides of the series choice rule (pipeline/io/dicom_select.py)."""

    # Regex (re.search) on SeriesDescription: only matching usable series are considered.
    description: str | None = None
    # case_id -> SeriesInstanceUID: that exact series, for cases the rule gets wrong.
    uids: dict[str, str] = Field(default_factory=dict)

    @field_validator("description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"series.description {value!r} is not a regex: {exc}") from exc
        return value


class DecathlonParams(Frozen):
    """Medical Segmentation Decathlon cohorts (pipeline/cohort/sources/decathlon.py)."""

    # Label values that count as pancreas: Task07 has 1 pancreas and 2 tumour; the tumour lies
    # inside the gland, and TCIA's labels outline the whole gland, so both by default.
    pancreas_values: tuple[int, ...] = (1, 2)

    @field_validator("pancreas_values")
    @classmethod
    def _values(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(set(value)) != len(value) or not all(1 <= v <= 255 for v in value):
            raise ValueError(
                f"pancreas_values {list(value)} must be distinct label values in 1..255"
            )
        return value


class IngestParams(Frozen):
    """CT series (DICOM, or NIfTI for "decathlon") + labels -> HU volumes."""

    # A cohort source: a module of pipeline/cohort/sources that sets SOURCE (registry.py lists
    # them; the ingest core refuses an unknown name, listing the valid ones, before it reads a
    # file). "tcia": DICOM series per case folder + labels (NIfTI, DICOM SEG or RTSTRUCT);
    # "decathlon": images = imagesTr/, labels = labelsTr/ of a Decathlon task (NIfTI).
    source: str = Field("tcia", min_length=1)
    images: str = "data/raw/phantom/Pancreas-CT"
    labels: str = "data/raw/phantom/TCIA_pancreas_labels-02-05-2017"
    workers: int = Field(2, ge=1)
    strict: bool = False
    # Relative tolerance on the spacing between consecutive slice positions; a gap larger
    # than (1 + tol) * median spacing is reported as a missing slice.
    slice_spacing_tolerance: float = Field(0.05, gt=0, lt=0.5)
    # What a case whose slice step varies or whose slices drift sideways (gantry tilt) becomes:
    # only "reject" (an error naming the case, the tilt or the step) is implemented.
    irregular: Literal["reject"] = "reject"
    series: SeriesChoiceParams = Field(default_factory=SeriesChoiceParams)
    # A file beside the chosen series that looks like a member of it but did not read with it:
    # a truncated or corrupt file with the DICOM signature or named like its slices, or a CT
    # image that continues its stack under another SeriesInstanceUID
    # (pipeline/io/dicom_members.py). "error": the case is refused, naming the file; "warn":
    # the volume is read without it and the case warns, naming the file.
    damaged_members: Literal["error", "warn"] = "error"
    # Pixel padding (PixelPaddingValue) and HU below outside_fov_below_hu (the -2000/-3024
    # fill outside the reconstructed field of view) become air_hu; null turns the latter off.
    air_hu: int = Field(-1000, ge=-1024, le=-900)
    outside_fov_below_hu: int | None = Field(-1500, le=-1025)
    # How labels find their CT voxels (pipeline/io/label_geometry.py): "affine" places them by
    # their NIfTI affine; "instance" pairs label slice j with InstanceNumber min + j, for label
    # sets whose headers are known not to carry the CT's geometry.
    label_geometry: Literal["affine", "instance"] = "affine"
    label_grid_tolerance_mm: float = Field(0.1, ge=0)
    # NIfTI label values other than 0 and 1: "binary" refuses the label, naming the values;
    # "nonzero" reads every non-zero value as pancreas and warns, naming the values.
    label_values: Literal["binary", "nonzero"] = "binary"
    label_outside_tolerance_mm: float = Field(1.0, ge=0)
    # DICOM SEG / RTSTRUCT labels (pipeline/io/label_dicom.py): the segments (SegmentLabel) or ROIs
    # (ROIName) whose name matches this regex, case-insensitive, are the pancreas (merged).
    roi_pattern: str = "pancreas"
    decathlon: DecathlonParams = Field(default_factory=DecathlonParams)
    # HU inside the aligned label outside these bounds: a warning, or an error with ``strict``.
    label_hu_mean_min: float = 0.0
    label_hu_mean_max: float = 200.0
    label_hu_sd_max: float = Field(45.0, gt=0)

    @field_validator("roi_pattern")
    @classmethod
    def _roi_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"roi_pattern {value!r} is not a regex: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _check_hu_bounds(self) -> IngestParams:
        if self.label_hu_mean_min >= self.label_hu_mean_max:
            raise ValueError(
                f"label_hu_mean_min {self.label_hu_mean_min} must be below "
                f"label_hu_mean_max {self.label_hu_mean_max}"
            )
        return self
