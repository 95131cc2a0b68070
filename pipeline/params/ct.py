"""Params sections of CT synthesis: the generators trained on CT pairs and ``gvae generate``.

Registered in ``pipeline.params.loader.SECTIONS`` as ``ct`` and ``generate``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from common.frozen import Frozen


class CTParams(Frozen):
    """Which registry models are trained on CT (image, mask) pairs, and how.

    ``model`` and ``train`` are merged over ``models.<name>.model`` and the ``train`` section
    for CT runs only, so MNIST and CT share one model definition and one trainer while CT gets
    its own budget (2-channel 64 px pairs cost several times a 32 px digit). Both are validated
    by the model's config class and by ``TrainConfig`` when a run starts (unknown keys fail).
    """

    models: list[str] = Field(
        default_factory=lambda: ["gvae", "vae", "wgan_gp", "vae_gan"],
        description="the CT generators, one DVC stage each (dvc.yaml reads this list)",
    )
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"models must be a non-empty list without repeats, got {v}")
        return v


class DeformParams(Frozen):
    """Elastic + affine deformation of real training masks (``generate.masks: deformed``).

    MAISI's mask augmentation (Guo et al. 2024, ``scripts/augmentation.py``) in 2D: MONAI's
    ``Rand2DElastic`` (a B-spline control grid every ``spacing_px`` pixels, offsets drawn from
    ``magnitude``) with a random rotation, scale and translation, nearest-neighbour resampling;
    a deformed mask is kept only if it keeps ``min_area_ratio`` of its area (MAISI: 80%), grows
    by no more than ``max_area_ratio`` and stays inside the body of the slice it came from.
    """

    draws_per_mask: int = Field(4, ge=1, description="deformed masks drawn per real mask")
    spacing_px: float = Field(16.0, gt=0)
    magnitude: tuple[float, float] = (0.5, 1.5)
    rotate_deg: float = Field(15.0, ge=0, le=180)
    scale: float = Field(0.1, ge=0, lt=1)
    translate_px: float = Field(4.0, ge=0)
    min_area_ratio: float = Field(0.8, gt=0, le=1)
    max_area_ratio: float = Field(1.25, ge=1)
    # Body = pixels above this windowed value (-1 is the window's floor, where air clips).
    body_threshold: float = Field(-0.99, gt=-1, lt=1)

    @field_validator("magnitude")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError(f"magnitude must be (low, high) with 0 <= low <= high, got {v}")
        return v


Policy = Literal["keep", "drop"]


class GenerateParams(Frozen):
    """``gvae generate``: synthetic (image, mask) pairs and what happens to doubtful masks.

    The mask is the generator's second channel thresholded at ``mask_threshold`` (in the
    [-1, 1] output range: 0 is probability 0.5). Every drawn sample falls in exactly one kind:
    ``empty`` (no mask pixel), ``tiny`` (mask area below ``min_area_mm2``), ``fragmented``
    (more than ``max_components`` 8-connected components) or ``ok``. Each kind other than
    ``ok`` is kept (empty masks become pancreas-free negatives; tiny or fragmented masks are
    kept as drawn) or dropped, by the policy of that kind; ``ok`` is always kept.
    """

    n: int = Field(512, ge=1, description="kept pairs written by the DVC stage")
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    mask_threshold: float = Field(0.0, gt=-1.0, lt=1.0)
    min_area_mm2: float = Field(
        25.0, ge=0.0, description="below this a mask is a speck, not a pancreas cross-section"
    )
    max_components: int = Field(3, ge=1, description="head, body and tail may part on a slice")
    empty: Policy = "keep"
    tiny: Policy = "drop"
    fragmented: Policy = "drop"
    max_draw_factor: float = Field(
        8.0, ge=1.0, description="stop after drawing this many times n, even if short of n"
    )
    # Mask-conditioned generators only: where the masks the images are drawn for come from.
    # "deformed": each training mask of the generator's own patients, deformed (``deform``);
    # "real": those masks as they are; "generated": the mask channel of a joint model's
    # generated set (`gvae generate --masks-from DIR`: mask first, then image). Generated
    # images keep their conditioning mask as their label.
    masks: Literal["deformed", "real", "generated"] = "deformed"
    # Sample in NHWC (channels_last): `gvae generate`'s core draws 1.6-2.0x as many slices per
    # second at 128 px on a 2-core AVX2 CPU (1.3-1.5x for the SPADE and conditional models;
    # docs/performance.md); the trainer has long trained in it. Float rounding differs from
    # NCHW at ~1e-6, nothing else.
    channels_last: bool = True
    deform: DeformParams = DeformParams()
