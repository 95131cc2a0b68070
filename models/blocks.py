"""ResNet building blocks and the three networks every model is assembled from.

Following the GVAE paper (Sagar 2020): residual blocks of convolutions with batch norm and 30%
dropout, average pooling on the way down and upsampling on the way up. Width doubles per stage
(capped at ``max_width``); the number of stages follows from the image size (down to 4x4).
Each stage changes width at the lower of its two resolutions (pool, then blocks; blocks, then
upsample): the same depth at a quarter of the arithmetic, which is what lets the CPU profile
train in minutes. Only the stem/output convolutions run at full resolution.
Convolution + norm + dropout + activation units are MONAI's ``Convolution``.
"""

from __future__ import annotations

from monai.networks.blocks import Convolution
from torch import Tensor, nn

ACT = ("leakyrelu", {"negative_slope": 0.2})
NORMS = {
    "batch": "batch",
    "instance": ("instance", {"affine": True}),
    "layer": ("group", {"num_groups": 1}),  # GroupNorm(1, C): layer norm over (C, H, W)
    "none": None,
}


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
        n = NORMS[norm]
        self.body = nn.Sequential(
            Convolution(2, c_in, c_out, kernel_size=3, act=ACT, norm=n, dropout=dropout or None),
            Convolution(2, c_out, c_out, kernel_size=3, act=None, norm=n),
        )
        self.skip = (
            nn.Identity()
            if c_in == c_out
            else Convolution(2, c_in, c_out, kernel_size=1, conv_only=True)
        )
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
        layers: list[nn.Module] = [
            Convolution(2, channels, widths[0], kernel_size=3, act=ACT, norm=None)
        ]
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
        layers += [Convolution(2, widths[0], channels, kernel_size=3, conv_only=True), nn.Tanh()]
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
        self.stem = Convolution(2, channels, widths[0], kernel_size=3, act=ACT, norm=None)
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
