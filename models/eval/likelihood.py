"""Encoder-based metrics: reconstruction error, ELBO and KL, IWAE bound on log p(x).

They need a VAE-like model with ``encode(x) -> (mu, logvar)``, ``decode(z) -> recon``,
``log_px_given_z(x, recon) -> (B,)`` (log-likelihood in nats summed over pixels) and
``latent_dim``; the prior is N(0, I) and the posterior a diagonal Gaussian. Every function runs
in eval mode under ``no_grad`` and restores the model's previous mode; results are per image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from models.base import eval_mode, kl_standard_normal

LOG_2PI = math.log(2 * math.pi)


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[torch.device]:
    """Eval mode (restored afterwards) and no_grad; yields the model's device."""
    with eval_mode(model), torch.no_grad():
        yield next(model.parameters()).device


def _batches(x: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) == 0:
        raise ValueError("no images to evaluate")
    for s in range(0, len(x), batch_size):
        yield x[s : s + batch_size].to(device)


def _gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim, in nats."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def reconstruction_error(model, x: torch.Tensor, batch_size: int = 256) -> float:
    """Mean per-pixel squared error of ``decode(mu)`` against ``x``, in [-1, 1] intensity units².

    Uses the posterior mean (no sampling), the deterministic reconstruction the paper shows.
    """
    total, count = 0.0, 0
    with _inference(model) as dev:
        for xb in _batches(x, batch_size, dev):
            mu, _ = model.encode(xb)
            total += float((model.decode(mu) - xb).double().pow(2).sum())
            count += xb.numel()
    return total / count


def elbo_and_kl(
    model, x: torch.Tensor, generator: torch.Generator, batch_size: int = 256
) -> dict[str, float]:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) per image, nats (Kingma & Welling 2014, eq. 10).

    The reconstruction term uses one reparameterised sample z = mu + sigma * eps per image
    (eps from ``generator``), the KL is analytic. Returns means over ``x`` of ``elbo``,
    ``log_px_given_z`` and ``kl``.
    """
    sums = {"elbo": 0.0, "log_px_given_z": 0.0, "kl": 0.0}
    with _inference(model) as dev:
        for xb in _batches(x, batch_size, dev):
            mu, logvar = model.encode(xb)
            eps = torch.randn(mu.shape, generator=generator).to(dev, mu.dtype)
            log_px = model.log_px_given_z(xb, model.decode(mu + (0.5 * logvar).exp() * eps))
            kl = kl_standard_normal(mu, logvar)
            sums["elbo"] += float((log_px - kl).double().sum())
            sums["log_px_given_z"] += float(log_px.double().sum())
            sums["kl"] += float(kl.double().sum())
    return {k: v / len(x) for k, v in sums.items()}


def log_importance_weights(
    model, x: torch.Tensor, k: int, generator: torch.Generator, batch_size: int = 64
) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for k samples z_i ~ q(z|x); (N, k) nats.

    Their mean over i is the Monte-Carlo ELBO estimate with the same z's; their log-mean-exp is
    the IWAE bound (Burda et al. 2016, eq. 8).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = []
    with _inference(model) as dev:
        for xb in _batches(x, batch_size, dev):
            b = len(xb)
            mu, logvar = model.encode(xb)  # (B, z)
            eps = torch.randn((b, k, mu.shape[1]), generator=generator).to(dev, mu.dtype)
            z = mu[:, None] + (0.5 * logvar).exp()[:, None] * eps  # (B, k, z)
            log_q = _gaussian_log_density(z, mu[:, None], logvar[:, None])
            log_pz = _gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
            xk = xb[:, None].expand(b, k, *xb.shape[1:]).reshape(b * k, *xb.shape[1:])
            log_px = model.log_px_given_z(xk, model.decode(z.reshape(b * k, -1))).reshape(b, k)
            out.append((log_px + log_pz - log_q).double().cpu())
    return torch.cat(out)


def iwae_bound(
    model, x: torch.Tensor, k: int, generator: torch.Generator, batch_size: int = 64
) -> float:
    """Mean over images of log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), nats per image.

    The importance-weighted bound L_k of Burda et al. (2016, eq. 8), computed with logsumexp to
    avoid underflow. L_1 is the ELBO, L_k increases with k and tends to log p(x); ``batch_size``
    counts images, each expanded to k decoder passes.
    """
    logw = log_importance_weights(model, x, k, generator, batch_size)
    return float((torch.logsumexp(logw, dim=1) - math.log(k)).mean())
