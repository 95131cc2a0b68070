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
