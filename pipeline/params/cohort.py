"""Params sections of the cohort phase: ``phantom`` and ``slices`` (window, crop, split, pairs).

Registered in ``pipeline.params.loader.SECTIONS``. ``check_disjoint`` lives here because the
explicit split lists are validated when the section is loaded; ``pipeline.cohort.split`` uses it
for the seeded split too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.frozen import Frozen


class SplitError(ValueError):
    """The requested split cannot be made from these cases (a settings problem, not data)."""


def check_disjoint(splits: Mapping[str, Iterable[str]]) -> None:
    """Raise ``SplitError`` if any case id appears in two splits (or twice in one)."""
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        for cid in ids:
            if cid in seen:
                raise SplitError(f"case {cid} is listed in both {seen[cid]} and {name}")
            seen[cid] = name


# ----------------------------------------------------------------------------- CT sections
class PhantomParams(Frozen):
    """Synthetic abdominal CT cohort written in the TCIA Pancreas-CT layout."""

    cases: int = Field(8, ge=1, le=999)
    seed: int = 0
    slices: int = Field(48, ge=8, description="axial slices per case")
    matrix: int = Field(256, ge=64, description="rows = columns of each DICOM image")
    slice_thickness_mm: float = Field(2.5, gt=0)


class WindowParams(Frozen):
    """CT intensity window in Hounsfield units (abdominal soft tissue by default)."""

    level: float = 40.0
    width: float = Field(400.0, gt=0)


class SplitParams(Frozen):
    """Patient-level split: seeded fractions, or explicit case lists that override them."""

    seed: int = 0
    train: float = Field(0.6, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)
    cases: dict[str, list[str]] | None = None

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total}")
        if self.cases is not None:
            unknown = set(self.cases) - {"train", "val", "test"}
            if unknown:
                raise ValueError(f"split.cases has unknown split(s) {sorted(unknown)}")
            check_disjoint(self.cases)
        return self


class PairsIntensity(Frozen):
    """Linear map from stored pixel value to Hounsfield units: ``HU = scale * pixel + offset``."""

    scale: float = 1.0
    offset: float = 0.0

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0 (every pixel would read the same HU)")
        return v


class PairsParams(Frozen):
    """Reading 2D image/mask file pairs (``images/<name>`` + ``masks/<name>``) as CT slices."""

    # Nominal in-plane spacing: the files do not record it (Pancreas-CT scans: 0.66-0.98 mm).
    pixel_mm: float = Field(0.8, gt=0)
    intensity: PairsIntensity = PairsIntensity()
    # Storage order of the rows; "posterior_to_anterior" is DICOM pixel_array order of TCIA
    # Pancreas-CT. Slices are flipped to anterior -> posterior like every other slice.
    rows: Literal["posterior_to_anterior", "anterior_to_posterior"] = "posterior_to_anterior"
    mask_threshold: int = Field(127, ge=0, le=254, description="pancreas where value > this")
    # Largest share of mask pixels in the mid-grey band (64..191) a binary mask may have:
    # JPEG ringing puts a few there, a grey-scale image saved as a mask puts most there.
    max_grey_fraction: float = Field(0.05, ge=0, le=1)
    # Matched against the file name without its extension; needs groups 'case' and 'slice'.
    pattern: str = r"^(?P<case>.+)-(?P<slice>\d+)$"

    @field_validator("pattern")
    @classmethod
    def _groups(cls, v: str) -> str:
        try:
            groups = re.compile(v).groupindex
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        missing = sorted({"case", "slice"} - set(groups))
        if missing:
            raise ValueError(f"pattern needs named group(s) {missing}, e.g. (?P<case>...)")
        return v


class SlicesParams(Frozen):
    """Window, resample, crop and split HU volumes (or 2D image/mask pairs) into 2D slices."""

    # Input folder (``gvae slices --input`` overrides it): the ingest output for "volumes", a
    # folder of images/ + masks/ for "pairs".
    input: str = "data/volumes"
    source: Literal["volumes", "pairs"] = "volumes"
    pairs: PairsParams = PairsParams()
    window: WindowParams = WindowParams()
    # Square field of view in mm; pixel size is fov_mm / size in every case. 200 mm covers the
    # upper abdomen around the pancreas (at 64 px a 3.1 mm pixel).
    fov_mm: float = Field(200.0, gt=0)
    # Crop centre: the body centre of each case ("body"), or the body centre plus one fixed
    # offset, the mean pancreas-minus-body offset of the TRAINING cases ("train_masks").
    centre: Literal["body", "train_masks"] = "train_masks"
    size: int = Field(64, ge=16)
    negative_fraction: float = Field(0.1, ge=0, le=1)
    shard_size: int = Field(512, ge=1)
    seed: int = 0
    split: SplitParams = SplitParams()

    @field_validator("size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"size must be a power of two, got {v}")
        return v
