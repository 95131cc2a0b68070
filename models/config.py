"""The validated settings every model shares: the network (``NetConfig``) and the trainer.

Pure pydantic (no torch import), so ``params.yaml``'s trainer settings can be validated without
loading a network. Each model's own config class subclasses ``NetConfig`` (or ``Frozen``) in the
``models/zoo`` module that registers the model. Every class forbids unknown keys and is frozen
(see ``common.frozen.Frozen``). The defaults are the small CPU profile (32x32, ~1500 steps in
minutes); paper-scale values are noted beside each field and belong in ``params.yaml``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.frozen import Frozen

Likelihood = Literal["bernoulli", "gaussian"]
# Critics never use batch norm: the WGAN-GP penalty is a per-sample gradient norm, and batch
# norm makes each critic output depend on the whole batch (Gulrajani et al. 2017, section 4).
CriticNorm = Literal["layer", "instance", "none"]


class NetConfig(Frozen):
    """Architecture shared by every model: ResNet stages scaled by ``width`` and depth.

    The number of down/up-sampling stages is not configured: it follows from the image size
    (every stage halves the resolution until 4x4).
    """

    latent_dim: int = Field(32, ge=1, description="size of z (GVAE paper, Table 5: 1000)")
    width: int = Field(8, ge=1, description="channels of the full-resolution stem")
    max_width: int = Field(64, ge=1, description="channel cap; width doubles per stage")
    blocks_per_stage: int = Field(1, ge=1, description="residual blocks per resolution")
    dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="encoder/generator dropout (GVAE paper: 30%)"
    )
    critic_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "critic/discriminator dropout. 0 keeps the critic a deterministic function: "
            "Larsen et al. 2016 measure reconstructions in its features Dis_l (eq. 9), which "
            "dropout would make differ between x and x itself, and the WGAN-GP penalty must "
            "constrain the same function the Wasserstein term estimates with (Gulrajani et al. "
            "2017, eq. 3), not another random mask"
        ),
    )
    likelihood: Likelihood = "bernoulli"
    sigma: float = Field(0.1, gt=0.0, description="pixel std of the gaussian likelihood")
    critic_norm: CriticNorm = "layer"

    @model_validator(mode="after")
    def _widths(self) -> NetConfig:
        if self.max_width < self.width:
            raise ValueError(f"max_width ({self.max_width}) must be >= width ({self.width})")
        return self


class TrainConfig(Frozen):
    """The one trainer's settings (``models.train.trainer.train``).

    ``critic_lr``/``critic_betas`` default to ``lr``/``adam_betas``. WGAN-GP's paper values are
    lr 1e-4 with betas (0, 0.9) for both networks; GVAE's are Adam, lr 1e-4, batch 32.
    ``optimizer`` applies to both networks; the betas are Adam's only.
    """

    steps: int = Field(1500, ge=1, description="encoder/generator updates")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "rmsprop"] = Field(
        "adam", description="rmsprop: WGAN's weight-clipping algorithm (Arjovsky et al. 2017)"
    )
    lr: float = Field(1e-4, gt=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    critic_lr: float | None = Field(None, gt=0.0)
    critic_betas: tuple[float, float] | None = None
    checkpoint_every: int = Field(500, ge=1)
    sample_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    grid: int = Field(8, ge=1, description="sample PNGs show grid x grid images")
    # Samples kept at every ``sample_every`` step (samples/step-XXXXXX.npz) for the evaluate
    # stage's diversity trajectory and mode-collapse flag; 0 = PNG grids only.
    snapshot_samples: int = Field(0, ge=0, description="samples saved per sample_every step")
    seed: int = 0
    grad_clip: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # NHWC layout: oneDNN's convolutions run 10-25% faster per step on 2 CPU cores (measured on
    # every critic model at 32 px), and it is the layout GPU tensor cores want.
    channels_last: bool = True
    # bf16 autocast (models.train.speed): auto = bf16 on CUDA, fp32 on a CPU; bf16 on a CPU only
    # with native bf16 (checked at run time; emulated bf16 measured 11x slower), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile of each network. Off: on a 2-core CPU no measurement showed it pays, and its
    # warm-up (15-150 s per network and process) outweighs short runs (docs/performance.md).
    compile: bool = False
    # aot_eager traces the graphs but runs eager kernels: a cheap check that a model compiles.
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"

    @model_validator(mode="after")
    def _betas(self) -> TrainConfig:
        for name in ("adam_betas", "critic_betas"):
            betas = getattr(self, name)
            if betas is not None and not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError(f"{name} must lie in [0, 1), got {betas}")
        return self
