"""The interface every generative model implements, and the likelihood helpers they share.

The trainer only ever calls ``losses``, ``critic_loss``, ``generator_parameters``,
``critic_parameters`` and ``decode``; evaluation calls ``sample``, ``encode``, ``forward`` and
``log_px_given_z``. Images are (B, C, H, W) in [-1, 1].
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from models.config import NetConfig


@dataclass
class VAEOutput:
    """What every VAE-like model returns; in eval mode ``z`` is ``mu`` (no sampling)."""

    recon: Tensor  # (B, C, H, W) in [-1, 1]
    mu: Tensor  # (B, latent)
    logvar: Tensor  # (B, latent)
    z: Tensor  # (B, latent)


def check_geometry(channels: int, size: int) -> int:
    """Validate ``channels``/``size`` and return the number of 2x stages from ``size`` to 4x4."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if size < 16 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 16, got {size}")
    return int(math.log2(size)) - 2


def reparameterize(mu: Tensor, logvar: Tensor, training: bool) -> Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) (Kingma & Welling 2014, eq. 4); ``mu`` in eval."""
    if not training:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, (B, latent) -> (B,).

    Closed form of Kingma & Welling 2014, Appendix B (the negative of eq. 10's first term), in
    nats; computed in at least fp32.
    """
    dtype = torch.promote_types(mu.dtype, torch.float32)  # fp32 under bf16 autocast; fp64 kept
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``module`` in eval mode, then restore every submodule's own flag.

    Evaluation mid-training (metrics, sample grids) must leave the caller's model as it was,
    also when the block raises; restoring per submodule keeps e.g. a frozen part in eval.
    """
    before = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in before:
            m.training = training


@torch.no_grad()
def batched(
    model: nn.Module,
    x: Tensor,
    fn: Callable[[Tensor], Tensor],
    batch_size: int,
    to_model_device: bool = False,
) -> Tensor:
    """``fn`` over ``x`` in chunks of ``batch_size`` (no grad, ``model`` in eval mode), joined.

    With ``to_model_device`` each chunk goes to the device of ``model``'s first parameter and
    its result back to the CPU. An empty ``x`` gives an empty tensor.
    """
    device = next(model.parameters()).device if to_model_device else None
    with eval_mode(model):
        if device is None:
            out = [fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        else:
            out = [fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def log_likelihood(x: Tensor, recon: Tensor, likelihood: str, sigma: float) -> Tensor:
    """log p(x | z) in nats, summed over channels and pixels: (B, C, H, W) x2 -> (B,).

    ``bernoulli``: the customary MNIST convention -- targets (x + 1) / 2 in [0, 1] and mean
    (recon + 1) / 2 clamped to [1e-6, 1 - 1e-6], i.e. binary cross-entropy on grey values
    without the continuous-Bernoulli normaliser (Kingma & Welling 2014, Appendix C.1).
    ``gaussian``: N(x; recon, sigma^2) per pixel (Appendix C.2 with fixed variance).
    Computed in fp32 even under bf16 autocast.
    """
    x, recon = x.float(), recon.float()
    if likelihood == "bernoulli":
        target = (x + 1.0) / 2.0
        p = ((recon + 1.0) / 2.0).clamp(1e-6, 1.0 - 1e-6)
        ll = target * torch.log(p) + (1.0 - target) * torch.log1p(-p)
    elif likelihood == "gaussian":
        ll = -0.5 * ((x - recon) / sigma).pow(2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; valid: bernoulli, gaussian")
    return ll.flatten(1).sum(dim=1)


class GenerativeModel(nn.Module):
    """Base of every registered model; subclasses build their networks and own their losses.

    Attributes: ``name`` (registry name), ``config`` (validated pydantic config), ``channels``,
    ``size``, ``latent_dim``, ``has_encoder``, ``has_critic``, ``n_critic`` (critic updates
    per encoder/generator update; 0 without a critic), ``deterministic_encoder`` (``forward``
    never samples: z = mu in train mode too, e.g. the plain autoencoder) and ``conditional``.

    A ``conditional`` (mask-conditioned) model trains on the CT pairs like every other model,
    a batch (B, 2, H, W) of image (channel 0) and mask (channel 1, {-1, 1}), but it learns
    p(image | mask): it draws an image FOR a given mask. Its ``decode`` and ``sample`` take
    ``condition``, a (B, 2, H, W) batch of (image, mask) pairs whose masks the drawn images must
    fit (the image channel is only read by models that keep the surroundings real), and return
    (drawn image, conditioning mask) pairs, so every synthetic slice carries its mask as label.
    """

    name: str = "base"
    has_encoder: bool = False
    has_critic: bool = False
    deterministic_encoder: bool = False
    conditional: bool = False

    def __init__(self, config: NetConfig, channels: int, size: int) -> None:
        super().__init__()
        if self.conditional and channels != 2:
            raise ValueError(
                f"{type(self).__name__} is mask-conditioned: it trains on (image, mask) pairs "
                f"(channels=2), got channels={channels}"
            )
        self.n_stages = check_geometry(channels, size)
        self.config = config
        self.channels = channels
        self.size = size
        self.latent_dim = config.latent_dim
        self.n_critic = int(getattr(config, "n_critic", 0)) if self.has_critic else 0

    # ----------------------------------------------------------------- training interface
    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """Encoder/generator losses for a batch (B, C, H, W); includes ``"total"``."""
        raise NotImplementedError

    def critic_loss(self, x: Tensor) -> dict[str, Tensor]:
        """Critic losses for a batch; includes ``"total"``. Only for ``has_critic`` models."""
        raise NotImplementedError(f"{self.name} has no critic")

    def generator_parameters(self) -> Iterator[Parameter]:
        """Parameters updated by the encoder/generator optimizer (everything but the critic)."""
        critic = {id(p) for p in self.critic_parameters()}
        return (p for p in self.parameters() if id(p) not in critic)

    def critic_parameters(self) -> Iterator[Parameter]:
        """Parameters updated by the critic optimizer (empty without a critic)."""
        critic = getattr(self, "critic", None)
        return iter(()) if critic is None else critic.parameters()

    def after_critic_step(self) -> None:
        """Called by the trainer after every critic optimizer step; a no-op by default.

        For constraints on the critic's weights (WGAN's weight clipping, Arjovsky et al. 2017,
        Algorithm 1, line 7).
        """

    def after_generator_step(self) -> None:
        """Called by the trainer after every encoder/generator optimizer step; a no-op by default.

        For state that follows the generator's weights (e.g. a frozen copy of an earlier one).
        """

    # ----------------------------------------------------------------- generation
    def decode(self, z: Tensor) -> Tensor:
        """Map latents to images: (B, latent) -> (B, C, H, W) in [-1, 1]."""
        raise NotImplementedError

    def check_condition(self, n: int, condition: Tensor | None) -> None:
        """``ValueError`` unless ``condition`` is a (n, 2, H, W) batch exactly when the model is
        conditional (see the class docstring)."""
        if not self.conditional:
            if condition is not None:
                raise ValueError(f"{self.name} is not mask-conditioned; it takes no condition")
            return
        want = (n, 2, self.size, self.size)
        if condition is None or tuple(condition.shape) != want:
            got = None if condition is None else tuple(condition.shape)
            raise ValueError(f"{self.name} draws images for masks: condition {want}, got {got}")

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, condition: Tensor | None = None
    ) -> Tensor:
        """Draw ``n`` images G(z), z ~ N(0, I): returns (n, C, H, W) in [-1, 1].

        A conditional model draws them for ``condition``'s masks (class docstring). Runs in
        eval mode (no dropout, batch-norm running statistics) and restores the previous mode,
        so sampling during training consumes no global random numbers.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.check_condition(n, condition)
        device = next(self.parameters()).device
        gen_device = generator.device if generator is not None else device
        z = torch.randn(n, self.latent_dim, generator=generator, device=gen_device).to(device)
        with eval_mode(self):
            if condition is None:
                return self.decode(z).float()
            return self.decode(z, condition.to(device)).float()

    # ----------------------------------------------------------------- encoder models only
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) parameters: (B, C, H, W) -> (mu, logvar), each (B, latent)."""
        raise NotImplementedError(f"{self.name} has no encoder")

    def forward(self, x: Tensor) -> VAEOutput:
        """Encode, sample z (z = mu in eval mode) and decode."""
        raise NotImplementedError(f"{self.name} has no encoder")

    def log_px_given_z(self, x: Tensor, recon: Tensor) -> Tensor:
        """log p(x|z) in nats summed over pixels, (B,), under the configured likelihood."""
        return log_likelihood(x, recon, self.config.likelihood, self.config.sigma)
