"""SPADE: spatially-adaptive normalisation (Park et al., "Semantic Image Synthesis with
Spatially-Adaptive Normalization", CVPR 2019), the conditional generator's building blocks.

Why SPADE and not concatenating the mask to the generator's input: a mask given once at the
input is washed out by the normalisation layers that follow ("normalization layers tend to
wash away semantic information", Park et al., section 3.1). SPADE re-injects the (resized)
condition at every normalisation, so the mask steers every scale of the drawn image, which is
what a small pancreas on a 64-px slice needs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import ConvUnit


class SPADE(nn.Module):
    """Eq. 1 of Park et al.: gamma(m) * (h - mu) / sigma + beta(m), with mu, sigma of a
    parameter-free batch norm and gamma, beta from a small conv net on the condition ``m``
    resized (nearest) to h's resolution. (B, c, H, W), (B, k, H0, W0) -> (B, c, H, W).
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        cond = F.interpolate(cond, size=h.shape[-2:], mode="nearest")
        a = self.shared(cond)
        # (1 + gamma): the block starts as the identity-scaled norm (SPADE's public code).
        return self.norm(h) * (1 + self.gamma(a)) + self.beta(a)


class SPADEResBlock(nn.Module):
    """SPADE ResBlk (Park et al., Fig. 4): [SPADE, LeakyReLU, conv] x 2 plus a skip that is
    SPADE + 1x1 conv when the width changes. (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, cond_channels: int, dropout: float) -> None:
        super().__init__()
        hidden = max(16, min(c_in, 128))
        self.norm1 = SPADE(c_in, cond_channels, hidden)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = SPADE(c_out, cond_channels, hidden)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.skip_norm = SPADE(c_in, cond_channels, hidden) if c_in != c_out else None
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        x = self.conv1(self.drop(F.leaky_relu(self.norm1(h, cond), 0.2)))
        x = self.conv2(F.leaky_relu(self.norm2(x, cond), 0.2))
        skip = self.skip(self.skip_norm(h, cond) if self.skip_norm is not None else h)
        return x + skip


class SPADEGenerator(nn.Module):
    """p(image | z, condition): (B, latent), (B, k, H, W) -> (B, out, H, W) in [-1, 1].

    The ResNet generator of ``models.blocks.Generator`` (z projected to 4x4, one stage per
    doubling, nearest upsampling) with every block a SPADE ResBlk fed the condition.
    """

    def __init__(
        self,
        out_channels: int,
        cond_channels: int,
        latent_dim: int,
        widths: list[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.top = widths[-1]
        self.project = nn.Linear(latent_dim, self.top * 16)
        rev = widths[::-1]
        self.blocks = nn.ModuleList(
            SPADEResBlock(c_in, c_out, cond_channels, dropout)
            for c_in, c_out in zip(rev[:-1], rev[1:], strict=True)
        )
        self.out = nn.Sequential(nn.LeakyReLU(0.2), ConvUnit(widths[0], out_channels, 3), nn.Tanh())

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.top, 4, 4)  # (B, latent) -> (B, w_top, 4, 4)
        for block in self.blocks:
            h = F.interpolate(block(h, cond), scale_factor=2, mode="nearest")  # x2 per stage
        return self.out(h)  # (B, w0, H, W) -> (B, out, H, W)
