"""Params sections of the CT quality stages: the in-domain feature net and the quality metrics.

Registered in ``pipeline.params.loader.SECTIONS`` as ``ct_features`` and ``ct_quality``.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from common.frozen import Frozen


class CtFeatureParams(Frozen):
    """The self-supervised CT feature network (``pipeline.augment.quality.features``).

    Defaults: 1000 steps of 64 slices take about 80 s on one CPU thread at 64 px; on 258 real
    Pancreas-CT training slices they reached 0.98 held-out pretext accuracy (chance 0.125).
    The accuracy on the validation split is written to the stage's ``summary.json``.
    """

    steps: int = Field(1000, ge=1, description="optimizer steps (mini-batches)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0, description="Adam learning rate, cosine-decayed to 0")
    seed: int = 0
    channels: tuple[int, ...] = Field(
        (8, 16, 32, 64), description="conv widths, one 2x max-pool each; size >= 2**len"
    )
    feature_dim: int = Field(64, ge=2, description="width of the penultimate layer (features)")
    threads: int | None = Field(1, ge=1, description="torch threads while training; null = all")

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {v}")
        return v


class MemorizationParams(Frozen):
    """Near-copy check (``pipeline.augment.quality.memorization``)."""

    # 5 %: a synthetic slice is a near-copy when it is closer to a training slice than 95 % of
    # unseen real (test-patient) slices are. With ~100 test slices a 1 % quantile would rest on
    # the single closest one; at 5 % the threshold is stable, and an honest generator loses
    # only ~5 % of its samples to the export's refusal.
    quantile: float = Field(0.05, gt=0, le=0.5, description="quantile of test-to-train distances")
    downsample: int = Field(2, ge=1, description="average-pool factor before the L2 distance")
    # Carlini et al. 2023 (Sec. 5.1): alpha = 0.5 over n = 50 neighbours. A copy sits far closer
    # to its source than to the next slices; a blurred average does not, and passes.
    ratio: float = Field(
        0.5, gt=0, le=1, description="flag only if d1 <= ratio * mean(d1..dn); 1: off"
    )
    neighbours: int = Field(50, ge=1, description="n of that mean: nearest training slices")


class QualityParams(Frozen):
    """Synthetic vs real test slices: MMD, MS-SSIM, FID, P/R, anatomy and memorization."""

    n_samples: int = Field(
        1000, ge=10, description="cap per set for distribution and anatomy metrics (seeded)"
    )  # memorization always scores every synthetic slice against every training slice
    ms_ssim_pairs: int = Field(500, ge=1, description="random pairs per set for MS-SSIM")
    pr_k: int = Field(3, ge=1, description="k of the k-NN manifolds of precision/recall")
    mmd_bandwidth: float | None = Field(
        None, gt=0, description="kernel sigma; None = median distance of the real test subset"
    )
    memorization: MemorizationParams = MemorizationParams()
    grid: int = Field(8, ge=1, description="real and synthetic panels each in grid.png")
    batch_size: int = Field(256, ge=1, description="images per forward pass / distance block")
    seed: int = 0
