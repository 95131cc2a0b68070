"""Params sections of the MNIST sanity check: data, in-domain classifier, evaluation.

Registered in ``pipeline.params.loader.SECTIONS`` as ``mnist``, ``classifier`` and ``evaluate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from common.frozen import Frozen

SANITY_DATASETS = ("mnist", "fashion_mnist")


class MnistParams(Frozen):
    """The sanity datasets: which ones the DAG compares on, and where the IDX files come from.

    ``mirror``: ``None`` means $GVAE_DATA_MIRROR, else the network. ``datasets``: dvc.yaml
    expands its sanity stages over this list, so it shapes the DAG; the CPU default compares on
    MNIST alone (the 2-core budget), the ``full`` and ``paper`` profiles on both datasets.
    """

    mirror: str | None = None
    datasets: list[Literal["mnist", "fashion_mnist"]] = Field(["mnist"], min_length=1)
    # The models the sanity stages train and compare (rows of the tables, in this order); each
    # needs a ``models.<name>`` block (checked by ``pipeline.params.models.load_params_models``).
    models: list[str] = Field(["vae", "beta_vae", "wgan_gp", "vae_gan", "gvae"], min_length=1)
    # Training seeds per (dataset, model): one train/sample/evaluate stage each, so the tables
    # give mean and sd over seeds (one run cannot rank close models). The `full` profile
    # requires at least three (``pipeline.params.loader``).
    seeds: list[int] = Field([0], min_length=1)

    @field_validator("datasets", "models", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must not repeat, got {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if min(v) < 0:
            raise ValueError(f"seeds must be >= 0 (torch.manual_seed), got {v}")
        return v


class ClassifierParams(Frozen):
    """The in-domain CNN whose predictions and penultimate features score generated images.

    Defaults train in well under a minute on two CPU cores (about 1.2 epochs of MNIST).
    """

    steps: int = Field(1200, ge=1, description="optimizer steps (mini-batches)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0, description="Adam learning rate, cosine-decayed to 0")
    seed: int = 0
    channels: tuple[int, int] = (16, 32)
    feature_dim: int = Field(128, ge=2, description="width of the penultimate layer (features)")
    threads: int | None = Field(1, ge=1, description="torch threads while training; null = all")

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"channels must be positive, got {v}")
        return v


class TraversalParams(Frozen):
    """Latent traversal grids of the ``sample`` stage (Higgins et al. 2017; Chen et al. 2018).

    Models with an encoder only (see ``models/eval/traversal.py``): the ``dims`` latent dimensions
    with the largest mean KL(q(z_d|x) || N(0, 1)) over ``kl_images`` random test images, one
    row each, swept over ``steps`` values evenly spaced on ``range`` (in prior standard
    deviations) while the other dimensions stay at the anchor code: the posterior mean of test
    image ``anchor_image``, or 0.
    """

    enabled: bool = False
    dims: int = Field(8, ge=1, description="rows: the latent dims with the largest test KL")
    steps: int = Field(9, ge=2, description="columns: values per dimension")
    range: tuple[float, float] = (-3.0, 3.0)
    anchor: Literal["test_image", "zero"] = "test_image"
    anchor_image: int = Field(0, ge=0, description="index in the test split of the anchor")
    kl_images: int = Field(500, ge=1, description="random test images the KL ranking uses")

    @field_validator("range")
    @classmethod
    def _increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(v)}")
        return v


class CollapseParams(Frozen):
    """When a run is flagged for mode collapse (``models.eval.metrics.entropy_collapse``).

    The trainer saves ``train.snapshot_samples`` samples at every ``sample_every`` step; the
    in-domain classifier's class-histogram entropy of each snapshot, divided by log K (1 when
    every class is hit equally often, 0 when all samples fall in one class), is the run's
    diversity trajectory. Flagged when a snapshot falls more than ``drop`` below the best
    earlier one (diversity lost during training, the GAN failure of Goodfellow 2016, sec.
    5.1.1). Snapshots within the first ``warmup`` fraction of the run's steps are left out: a
    barely trained network's noise spreads over the classes by chance, and its fall to the
    first learned shapes is not a collapse.
    """

    drop: float = Field(0.15, gt=0.0, le=1.0, description="fall below the earlier best")
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of steps not judged")


class EvaluateParams(Frozen):
    """Sample sizes and settings of the paper's metrics (see ``models/eval/metrics.py``)."""

    n_samples: int = Field(2000, ge=10, description="generated and real images per metric")
    iw_samples: int = Field(64, ge=1, description="k of the IWAE bound (Burda et al. 2016)")
    iw_images: int = Field(500, ge=1, description="test images the IWAE bound is averaged over")
    ms_ssim_pairs: int = Field(1000, ge=1, description="random pairs for MS-SSIM diversity")
    pr_k: int = Field(3, ge=1, description="k of the k-NN manifolds of precision/recall")
    mmd_bandwidth: float | None = Field(
        None, gt=0, description="kernel sigma; None = median distance of the real test subset"
    )
    batch_size: int = Field(256, ge=1, description="images per forward pass in every metric")
    seed: int = 0
    traversal: TraversalParams = TraversalParams()
    collapse: CollapseParams = CollapseParams()
