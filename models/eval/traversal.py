"""Latent traversals: decode one code with a single latent dimension swept at a time.

The qualitative disentanglement figure of beta-VAE (Higgins et al. 2017, "beta-VAE: Learning
Basic Visual Concepts with a Constrained Variational Framework") and beta-TCVAE (Chen et al.
2018, "Isolating Sources of Disentanglement in Variational Autoencoders"): start from a code
z0 (the posterior mean of one real image, or the prior mean 0), set one dimension to each of a
row of values (e.g. -3..3 prior standard deviations) while the others keep z0's values, and
decode. Rows are dimensions, columns values. Which dimensions to show: those with the largest
KL(q(z_d|x) || N(0, 1)) averaged over test data, i.e. the informative ones; the rest stay near
the prior and decode to the same image along their whole row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.base import eval_mode


def traversal_codes(z0: Tensor, dims: Sequence[int], values: Tensor) -> Tensor:
    """Return the (len(dims) * len(values), latent) codes of a traversal, dimension-major.

    Row ``i * len(values) + j`` is ``z0`` with entry ``dims[i]`` set to ``values[j]``; every
    other entry equals ``z0``'s. ``z0`` (latent,) and ``values`` (K,) are not modified.
    """
    if z0.ndim != 1:
        raise ValueError(f"z0 must be one code of shape (latent,), got shape {tuple(z0.shape)}")
    values = torch.as_tensor(values, dtype=z0.dtype)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values must be non-empty and 1-D, got shape {tuple(values.shape)}")
    if len(dims) == 0:
        raise ValueError("dims must name at least one latent dimension")
    bad = [d for d in dims if not 0 <= d < len(z0)]
    if bad:
        raise ValueError(f"latent dimension(s) {bad} out of range for a {len(z0)}-d code")
    codes = z0.detach().expand(len(dims), len(values), len(z0)).clone()  # (n_dims, K, latent)
    for i, d in enumerate(dims):
        codes[i, :, d] = values
    return codes.reshape(-1, len(z0))  # (n_dims, K, latent) -> (n_dims * K, latent)


@torch.no_grad()
def traversal(
    model: nn.Module, z0: Tensor, dims: Sequence[int], values: Tensor, batch_size: int = 256
) -> Tensor:
    """Decode :func:`traversal_codes` with ``model.decode`` in eval mode.

    Returns float32 images (len(dims) * len(values), C, H, W) on the CPU, row ``i * K + j``
    the decoded code with dimension ``dims[i]`` at ``values[j]`` (K = len(values)); tiled with
    ``nrow=K`` this is the grid of Higgins et al. 2017 (rows = dimensions, columns = values).
    """
    codes = traversal_codes(z0, dims, values)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with eval_mode(model):
        images = [model.decode(c.to(device)).float().cpu() for c in codes.split(batch_size)]
    return torch.cat(images)


@torch.no_grad()
def kl_per_dim(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Mean over ``x`` (N, C, H, W) of KL(q(z_d|x) || N(0, 1)) per dimension: (latent,), nats.

    The closed form of Kingma & Welling 2014, Appendix B, per dimension instead of summed
    (``models.base.kl_standard_normal`` is its sum over d), from ``model.encode`` in eval mode,
    accumulated in float64.
    """
    if len(x) == 0:
        raise ValueError("kl_per_dim needs at least one image")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    total = None
    with eval_mode(model):
        for chunk in x.split(batch_size):
            mu, logvar = model.encode(chunk.to(device))  # (B, latent) each
            mu, logvar = mu.double(), logvar.double()
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, latent)
            total = kl.sum(0) if total is None else total + kl.sum(0)
    return (total / len(x)).float().cpu()


def top_dims(kl: Tensor, n: int) -> list[int]:
    """Indices of the ``min(n, len(kl))`` largest entries of ``kl``, largest first.

    Ties keep the lower index first (a stable sort), so the choice is reproducible.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    order = torch.argsort(torch.as_tensor(kl), descending=True, stable=True)
    return order[: min(n, len(order))].tolist()
