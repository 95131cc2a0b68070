"""SPADE GAN: GauGAN (Park et al., "Semantic Image Synthesis with Spatially-Adaptive
Normalization", CVPR 2019) drawing the CT image FOR a given mask, p(image | mask).

The parts are MONAI's: the generator is ``monai.networks.nets.SPADENet`` in its VAE mode
(``is_vae``, Park et al.'s multi-modal synthesis): an encoder E(image) -> q(z | image) and a
decoder G(z, m) that projects z to the coarsest grid and injects the mask m at every scale by
SPADE (eq. 1). Encoding the real image gives every fake a real partner with the same mask,
which is what makes the feature-matching term a reconstruction loss; sampling draws
z ~ N(0, I) instead, so the base class's ``sample`` (z of ``latent_dim``, then ``decode``) and
a seeded generator give the same images. Without the encoder SPADENet ignores z altogether and
every draw for a mask would be the same image. The discriminator is MONAI's
``MultiScalePatchDiscriminator`` on the (image, mask) pair, so an image that does not fit its
mask is a fake even when it looks like CT: ``num_d`` PatchGANs after pix2pixHD (Wang et al.
2018, section 3.2), where MONAI gives the k-th a wider view by making it k times as deep
(``disc_layers`` stride-2 layers each time) rather than by downsampling its input.

Generator/encoder loss, with x = (image, m), z ~ q(z | image), fake = (G(z, m), m):
    adv_weight * L_adv,G(fake) + fm_weight * L_FM + kl_weight * KL(q(z | image) || N(0, I)),
    L_FM = 1 / num_d * sum_k sum_i 1 / N_i || D_k^(i)(x) - D_k^(i)(fake) ||_1
(pix2pixHD, eq. 4, over every intermediate layer i of discriminator k, N_i its elements;
averaged over the discriminators as Park et al.'s code does); discriminator loss
L_adv,D(x, fake). Both adversarial terms are the hinge loss (Lim & Ye 2017, "Geometric GAN";
Miyato et al. 2018), which Park et al. put in place of pix2pixHD's least-squares term, as
``monai.losses.PatchAdversarialLoss(criterion="hinge")`` computes it, averaged over patches and
discriminators: MONAI passes the logits through tanh first, so L_adv,D = E[1 - tanh D(x)] +
E[1 + tanh D(fake)] and L_adv,G = E[1 - tanh D(fake)] (the hinge never clips a tanh in
(-1, 1)). Park et al. also use a VGG perceptual loss (lambda = 10); it needs ImageNet weights
that cannot be downloaded here, so there is none: the feature-matching term is the only
reconstruction pressure.

``context: background`` works as in ``models.zoo.cgvae``: the real slice with the mask's
dilated region blanked to -1 is a second SPADE condition channel, and the drawn image is the
generator's output inside that region and the real slice outside it. MONAI is imported when a
model is built, not when this module is (see ``models.zoo.ddpm``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from common.frozen import Frozen
from models.base import GenerativeModel, kl_standard_normal, reparameterize
from models.zoo import register
from models.zoo.cgvae import context_condition, keep_context


class SPADEGANConfig(Frozen):
    """GauGAN's networks (MONAI's SPADENet and multi-scale PatchGAN) and loss weights.

    Park et al.'s values (z 256, 64-1024 generator channels, 128 SPADE hidden channels,
    64-channel discriminators, lambda_FM 10, lambda_KL 0.05) are for 256-px GPU training; the
    defaults are the CPU scale.
    """

    latent_dim: int = Field(16, ge=1, description="z of SPADENet's encoder (Park et al.: 256)")
    num_channels: tuple[int, ...] = Field(
        (16, 32, 64),
        min_length=1,
        description="encoder widths per stride-2 level; the decoder runs them in reverse",
    )
    spade_hidden: int = Field(32, ge=1, description="SPADE's hidden channels (Park et al.: 128)")
    disc_channels: int = Field(16, ge=1, description="first-layer filters of each PatchGAN")
    disc_layers: int = Field(2, ge=1, description="stride-2 layers of the first PatchGAN")
    num_d: int = Field(2, ge=1, description="discriminators (Park et al.: 2)")
    n_critic: int = Field(1, ge=1, description="discriminator updates per generator update")
    adv_weight: float = Field(1.0, ge=0.0, description="weight of the generator's hinge term")
    fm_weight: float = Field(10.0, ge=0.0, description="lambda_FM (pix2pixHD eq. 4: 10)")
    kl_weight: float = Field(0.05, ge=0.0, description="lambda_KL (Park et al.: 0.05)")
    context: Literal["none", "background"] = "none"
    context_margin_px: int = Field(4, ge=0, description="dilation of the drawn region, pixels")


def feature_matching(fake: list[list[Tensor]], real: list[list[Tensor]]) -> Tensor:
    """pix2pixHD's L_FM (Wang et al. 2018, eq. 4): mean absolute difference of every
    intermediate feature map, summed over layers, averaged over discriminators; fp32 scalar.
    The real features are targets: no gradient flows into them."""
    total = sum(
        F.l1_loss(f.float(), r.detach().float())
        for fs, rs in zip(fake, real, strict=True)
        for f, r in zip(fs, rs, strict=True)
    )
    return total / len(fake)


@register("spade_gan", SPADEGANConfig)
class SPADEGAN(GenerativeModel):
    """GauGAN on (image, mask) pairs; see the module docstring."""

    name = "spade_gan"
    has_critic = True
    conditional = True

    def __init__(self, config: SPADEGANConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import MultiScalePatchDiscriminator, SPADENet

        c = config
        if size // 2 ** len(c.num_channels) < 2:  # instance norm needs 2+ pixels per map
            raise ValueError(
                f"size {size} allows fewer halvings than num_channels {list(c.num_channels)}"
            )
        if size // 2 ** (c.disc_layers * c.num_d) < 2:
            raise ValueError(
                f"size {size} is too small for {c.num_d} discriminators of {c.disc_layers} "
                f"stride-2 layers each (the deepest halves it {c.disc_layers * c.num_d} times)"
            )
        self.cond_channels = 2 if c.context == "background" else 1
        self.net = SPADENet(
            spatial_dims=2,
            in_channels=1,  # the encoder sees the image; the mask reaches G through SPADE
            out_channels=1,
            label_nc=self.cond_channels,
            input_shape=(size, size),
            channels=list(c.num_channels),  # a fresh list: SPADENet reverses it in place
            z_dim=c.latent_dim,
            is_vae=True,
            spade_intermediate_channels=c.spade_hidden,
            last_act="TANH",
        )
        # Instance norm, as in MONAI's SPADE tutorial: batch norm would make each patch's
        # verdict depend on the rest of the batch, real and fake batches being separate calls.
        self.critic = MultiScalePatchDiscriminator(
            num_d=c.num_d,
            num_layers_d=c.disc_layers,
            spatial_dims=2,
            channels=c.disc_channels,
            in_channels=channels,
            out_channels=1,
            kernel_size=3,
            norm="INSTANCE",
            minimum_size_im=size,
        )
        self.adversarial = PatchAdversarialLoss(criterion="hinge")

    # ----------------------------------------------------------------- generation
    def _draw(self, z: Tensor, pairs: Tensor) -> Tensor:
        """G(z, m): (B, latent), (B, 2, H, W) -> images (B, 1, H, W) in [-1, 1] for the masks
        of ``pairs`` (with ``context: background`` real outside the drawn region)."""
        c = self.config
        cond, region = context_condition(pairs, c.context, c.context_margin_px)
        return keep_context(self.net.decode(cond, z), pairs, region)

    def decode(self, z: Tensor, condition: Tensor | None = None) -> Tensor:
        """(B, latent) and (B, 2, H, W) pairs -> (drawn image, their mask) (B, 2, H, W)."""
        self.check_condition(z.shape[0], condition)
        return torch.cat([self._draw(z, condition), condition[:, 1:]], dim=1)

    def _fake(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(fake pair G(z, m) with mask m, mu, logvar), z ~ q(z | image) (mu in eval mode)."""
        mu, logvar = self.net.encoder(x[:, :1])  # (B, 1, H, W) -> (B, latent) x 2
        z = reparameterize(mu, logvar, self.training)
        return torch.cat([self._draw(z, x), x[:, 1:]], dim=1), mu, logvar

    # ----------------------------------------------------------------- training interface
    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"adv", "fm", "kl", "total"} of the generator/encoder step (module docstring)."""
        c = self.config
        fake, mu, logvar = self._fake(x)
        fake_logits, fake_features = self.critic(fake)
        with torch.no_grad():  # the real features are only targets
            _, real_features = self.critic(x)
        adv = self.adversarial(fake_logits, target_is_real=True, for_discriminator=False)
        fm = feature_matching(fake_features, real_features)
        kl = kl_standard_normal(mu, logvar).mean()
        total = c.adv_weight * adv + c.fm_weight * fm + c.kl_weight * kl
        return {"adv": adv, "fm": fm, "kl": kl, "total": total}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"real", "fake", "total"}: the hinge loss of the discriminators on real pairs and on
        fakes drawn from encoded z (GauGAN's discriminator step)."""
        with torch.no_grad():  # the discriminator step trains the discriminators only
            fake, _, _ = self._fake(x)
        real_logits, _ = self.critic(x)
        fake_logits, _ = self.critic(fake)
        real = self.adversarial(real_logits, target_is_real=True, for_discriminator=True)
        fake_term = self.adversarial(fake_logits, target_is_real=False, for_discriminator=True)
        return {"real": real, "fake": fake_term, "total": real + fake_term}
