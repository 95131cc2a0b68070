"""The paper's own numbers, kept apart from ours (reference columns of the report).

A. Sagar, "Generate High Fidelity Images With Generative Variational Autoencoder" (2020):
Table 4 (MNIST) and Table 6 (Fashion-MNIST) compare GVAE with its baselines on MMD (printed
x1e-4), SSIM, log-likelihood, reconstruction error, ELBO and KL. The tables' values were not
available to us in machine-readable form when this was written, so every entry is empty rather
than guessed; fill ``PAPER_TABLES[dataset][model][metric]`` from the published PDF. Keys:
``mmd_x1e4``, ``ssim``, ``log_likelihood``, ``recon``, ``elbo``, ``kl``.
"""

from __future__ import annotations

PAPER_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "mnist": {},
    "fashion_mnist": {},
}
