"""ResNet building blocks and the three networks every model is assembled from.

Following the GVAE paper (Sagar 2020): residual blocks of convolutions with batch norm and 30%
dropout, average pooling on the way down and upsampling on the way up. Width doubles per stage
(capped at ``max_width``); the number of stages follows from the image size (down to 4x4).
Each stage changes width at the lower of its two resolutions (pool, then blocks; blocks, then
upsample): the same depth at a quarter of the arithmetic, which is what lets the CPU profile
train in minutes. Only the stem/output convolutions run at full resolution.
Convolution + norm + dropout + activation units are :class:`ConvUnit`, a drop-in copy of the
layout of MONAI's ``Convolution`` (same module names, so the same state-dict keys; a test
checks both give identical outputs). Why not MONAI's own class: importing ``monai`` loads every
sub-package (transforms, scipy.signal, matplotlib) and costs ~3.5 s per process on a 2-core
machine, paid by each of the ~30 DVC stages that only need a network.
"""

from __future__ import annotations

from torch import Tensor, nn

ACT = "leakyrelu"
NORMS = {
    "batch": lambda c: nn.BatchNorm2d(c),
    "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
    "layer": lambda c: nn.GroupNorm(1, c),  # GroupNorm(1, C): layer norm over (C, H, W)
    "none": None,
}


class ConvUnit(nn.Sequential):
    """Conv2d ("same" padding) then, in MONAI's ADN order, norm (N), dropout (D), activation (A).

    Module names follow ``monai.networks.blocks.Convolution``: ``conv`` and ``adn.{N,D,A}``; a
    unit with none of the three is a bare ``conv``. (B, c_in, H, W) -> (B, c_out, H, W).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        act: str | None = None,
        norm: str = "none",
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2))
        adn = nn.Sequential()
        if NORMS[norm] is not None:
            adn.add_module("N", NORMS[norm](c_out))
        if dropout:
            adn.add_module("D", nn.Dropout(dropout))
        if act == ACT:
            adn.add_module("A", nn.LeakyReLU(0.2))
        if len(adn):
            self.add_module("adn", adn)


def stage_widths(width: int, max_width: int, n_stages: int) -> list[int]:
    """Channels at each resolution, full size first: ``min(width * 2**i, max_width)``."""
    return [min(width * 2**i, max_width) for i in range(n_stages + 1)]


class ResBlock(nn.Module):
    """Pre-activation-free residual block: x -> act(conv-N-D-A-conv-N(x) + skip(x)).

    (B, c_in, H, W) -> (B, c_out, H, W); the skip is a 1x1 convolution when widths differ.
    """

    def __init__(self, c_in: int, c_out: int, norm: str, dropout: float) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        self.body = nn.Sequential(
            ConvUnit(c_in, c_out, 3, act=ACT, norm=norm, dropout=dropout),
            ConvUnit(c_out, c_out, 3, norm=norm),
        )
        self.skip = nn.Identity() if c_in == c_out else ConvUnit(c_in, c_out, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.skip(x))


def _stage(c_in: int, c_out: int, blocks: int, norm: str, dropout: float) -> list[nn.Module]:
    return [ResBlock(c_in if i == 0 else c_out, c_out, norm, dropout) for i in range(blocks)]


class Encoder(nn.Module):
    """q(z|x): (B, C, H, W) -> (mu, logvar), each (B, latent)."""

    def __init__(
        self,
        channels: int,
        latent_dim: int,
        widths: list[int],
        blocks: int,
        norm: str,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvUnit(channels, widths[0], 3, act=ACT)]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.AvgPool2d(2), *_stage(c_in, c_out, blocks, norm, dropout)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1] * 16, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x).flatten(1)  # (B, C, H, W) -> (B, w_top * 4 * 4)
        mu, logvar = self.head(h).chunk(2, dim=1)  # (B, 2 * latent) -> 2 x (B, latent)
        return mu, logvar


class Generator(nn.Module):
    """p(x|z) mean / GAN generator: (B, latent) -> (B, C, H, W) in [-1, 1] (tanh)."""

    def __init__(
        self,
        channels: int,
        latent_dim: int,
        widths: list[int],
        blocks: int,
        norm: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.top = widths[-1]
        self.project = nn.Linear(latent_dim, self.top * 16)
        layers: list[nn.Module] = []
        rev = widths[::-1]
        for c_in, c_out in zip(rev[:-1], rev[1:], strict=True):
            layers += [
                *_stage(c_in, c_out, blocks, norm, dropout),
                nn.Upsample(scale_factor=2, mode="nearest"),
            ]
        layers += [ConvUnit(widths[0], channels, 3), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.top, 4, 4)  # (B, latent) -> (B, w_top, 4, 4)
        return self.body(h)  # (B, w_top, 4, 4) -> (B, C, H, W)


class Critic(nn.Module):
    """WGAN critic / GAN discriminator: (B, C, H, W) -> (B,) score.

    ``forward(x, with_features=True)`` also returns every stage's output (after its blocks), the
    feature maps VAE/GAN measures reconstructions in (Larsen et al. 2016, eq. 8).
    """

    def __init__(
        self, channels: int, widths: list[int], blocks: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        if norm == "batch":
            raise ValueError(
                "critics take layer/instance/no norm: batch norm couples samples "
                "and breaks the per-sample gradient penalty"
            )
        self.stem = ConvUnit(channels, widths[0], 3, act=ACT)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(2), *_stage(c_in, c_out, blocks, norm, dropout))
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1] * 16, 1)

    def forward(self, x: Tensor, with_features: bool = False) -> Tensor | tuple[Tensor, list]:
        h = self.stem(x)
        feats = []
        for stage in self.stages:
            h = stage(h)  # (B, c, H, W) -> (B, 2c, H/2, W/2) (width capped at max_width)
            feats.append(h)
        score = self.head(h.flatten(1)).squeeze(1)  # (B, w_top * 16) -> (B,)
        return (score, feats) if with_features else score
