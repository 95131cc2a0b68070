"""Non-saturating GAN (Goodfellow et al. 2014) and its drift-regularised variant (Su 2018).

Both reuse WGAN-GP's generator/critic pair (``models.zoo.wgan_gp.WGANGP``): the critic's score is
the discriminator's logit, D(x) = sigmoid(critic(x)). Only the losses differ.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor
from torch.nn import Parameter

from models.config import NetConfig
from models.zoo import register
from models.zoo.wgan_gp import WGANGP


class GANConfig(NetConfig):
    """Non-saturating GAN (Goodfellow et al. 2014, Algorithm 1 with k = 1)."""

    n_critic: int = Field(1, ge=1, description="discriminator updates per generator update (k)")


class GANDriftRegConfig(GANConfig):
    """GAN with the generator drift regulariser of Su 2018 (``GANDriftReg``)."""

    drift_weight: float = Field(
        1.0, ge=0.0, description="lambda of lambda * ||G(z) - G_old(z)||^2 (summed over pixels)"
    )


def nonsaturating_loss(logits: Tensor) -> Tensor:
    """Mean of -log D over the batch, D = sigmoid(logits): (B,) -> scalar, in fp32.

    The generator loss Goodfellow et al. 2014 recommend in section 3 (maximise log D(G(z))
    instead of minimising log(1 - D(G(z))), which saturates early in training).
    -log sigmoid(l) = softplus(-l), stable for any logit.
    """
    return F.softplus(-logits.float()).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> dict[str, Tensor]:
    """{"real", "fake", "total"}: -E[log D(x)], -E[log(1 - D(G(z)))] and their sum.

    The discriminator's side of the value function V(D, G) (Goodfellow et al. 2014, eq. 1),
    as binary cross-entropy on logits; -log(1 - sigmoid(l)) = softplus(l).
    """
    real = F.softplus(-real_logits.float()).mean()
    fake = F.softplus(fake_logits.float()).mean()
    return {"real": real, "fake": fake, "total": real + fake}


def real_and_fake_scores(model: WGANGP, x: Tensor) -> tuple[Tensor, Tensor]:
    """Critic outputs (B,) x2 for real ``x`` and for B fresh samples G(z), in one critic call.

    G(z) is drawn without gradient (a critic update never trains the generator); the critic has
    no batch norm, so scoring both halves together changes nothing but speed.
    """
    b = x.shape[0]
    with torch.no_grad():
        fake = model.decode(model._prior(b, x))
    scores = model.critic(torch.cat([x, fake.to(x.dtype)]))  # (2B, C, H, W) -> (2B,)
    return scores[:b], scores[b:]


@register("gan", GANConfig)
class GAN(WGANGP):
    """Generator G(z) and discriminator D = sigmoid(critic); losses of Goodfellow et al. 2014.

    Generator: -E[log D(G(z))] (section 3, the non-saturating form); discriminator: binary
    cross-entropy on real x against G(z) (Algorithm 1, with ``n_critic`` = k steps).
    """

    name = "gan"

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"adv", "total"}: -E[log D(G(z))] for a batch of x.shape[0] prior samples."""
        adv = nonsaturating_loss(self.critic(self.decode(self._prior(x.shape[0], x))))
        return {"adv": adv, "total": adv}

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """{"real", "fake", "total"} (:func:`discriminator_loss`) for x against G(z)."""
        return discriminator_loss(*real_and_fake_scores(self, x))


@register("gan_drift_reg", GANDriftRegConfig)
class GANDriftReg(GAN):
    """Non-saturating GAN whose generator loss adds lambda * ||G(z) - G_old(z)||^2.

    J. Su 2018, "Variational Inference: A Unified Framework of Generative Models and Some
    Revelations", GAN section: deriving the GAN from variational inference leaves, beside
    -log D(G(z)), a KL between the new and the previous generator's distributions, which for
    a deterministic generator becomes lambda * ||G(z) - G_old(z)||^2 (summed over pixels,
    averaged over the batch): each update is held near the generator it started from.

    G_old is the generator as it was before the previous update. A copy of the weights the
    current update starts from would equal G, and the term with its gradient would vanish
    at every step. Two frozen copies hold the state: ``generator_prev`` (the weights after the
    last update) and ``generator_old`` (those before it); ``after_generator_step`` moves
    prev -> old and current -> prev. They are submodules, so ``.to()``, ``channels_last``
    and the checkpoint carry them (a resumed run continues the same regulariser), and they
    are left out of ``generator_parameters()``, so the optimizer never sees them. G_old runs
    under a forked random-number state with the same batch, hence with G's dropout masks and
    batch statistics: the term measures the weights' drift, not dropout noise, and is exactly
    0 while G_old equals G (the first step).
    """

    name = "gan_drift_reg"

    def __init__(self, config: GANDriftRegConfig, channels: int, size: int) -> None:
        super().__init__(config, channels, size)
        self.generator_old = copy.deepcopy(self.generator).requires_grad_(False)
        self.generator_prev = copy.deepcopy(self.generator).requires_grad_(False)

    def generator_parameters(self) -> Iterator[Parameter]:
        """Everything but the critic and the two frozen generator copies."""
        frozen = {id(p) for m in (self.generator_old, self.generator_prev) for p in m.parameters()}
        return (p for p in super().generator_parameters() if id(p) not in frozen)

    def _old_output(self, z: Tensor) -> Tensor:
        """G_old(z), consuming no random numbers: G(z) then draws the same dropout masks."""
        devices = [z.device] if z.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            return self.generator_old(z)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"adv", "drift", "total"}: -E[log D(G(z))] + drift_weight * E||G(z) - G_old(z)||^2."""
        z = self._prior(x.shape[0], x)
        old = self._old_output(z)
        fake = self.decode(z)  # (B, latent) -> (B, C, H, W)
        adv = nonsaturating_loss(self.critic(fake))
        drift = (fake.float() - old.float()).pow(2).flatten(1).sum(1).mean()
        return {"adv": adv, "drift": drift, "total": adv + self.config.drift_weight * drift}

    @torch.no_grad()
    def after_generator_step(self) -> None:
        """Shift the frozen copies one update on: old <- prev, prev <- current generator."""
        old, prev = self.generator_old.state_dict(), self.generator_prev.state_dict()
        for key, current in self.generator.state_dict().items():
            old[key].copy_(prev[key])
            prev[key].copy_(current)
