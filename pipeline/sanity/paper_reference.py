"""The paper's own numbers, kept apart from ours (reference columns of the comparison tables).

A. Sagar, "Generate High Fidelity Images With Generative Variational Autoencoder" (2020), as
printed: Table 4 (MNIST: WGAN-GP, VAE-GAN, alpha-GAN and GVAE on MMD and MS-SSIM; GVAE at
latent size 1000, the Table 5 row with the same figures), Table 6 (MNIST, VAE vs GVAE:
log-likelihood, reconstruction error, ELBO, KL) and Table 7 (MNIST, GVAE's lower bound on
log p(x) in nats). The paper prints no Fashion-MNIST table, so that dataset has no reference.
Model names are our registry's. ``PAPER_UNITS`` says, per key, which table a value comes from
and in which unit, as far as the paper states one.
"""

from __future__ import annotations

PAPER_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "mnist": {
        "wgan_gp": {"mmd_x1e4": 0.327, "ms_ssim": 0.996},
        "vae_gan": {"mmd_x1e4": 0.075, "ms_ssim": 0.972},
        "alpha_gan": {"mmd_x1e4": 0.131, "ms_ssim": 0.843},
        "gvae": {
            "mmd_x1e4": 0.068,
            "ms_ssim": 0.818,
            "log_likelihood": -1.353,
            "recon": 4.27e-3,  # printed "4.27 x 0.001"
            "elbo": -1.404,
            "kl": 0.046,
            "log_px_nats": -82.2,
        },
        "vae": {"log_likelihood": -1.568, "recon": 88.5e-3, "elbo": -1.697, "kl": 0.165},
    },
    "fashion_mnist": {},
}

# Key -> where the value comes from and its unit. Table 6's log-likelihood (-1.35) and Table 7's
# bound (-82.2 nats) cannot both be nats per MNIST image, so Table 6 gets no unit.
PAPER_UNITS: dict[str, str] = {
    "mmd_x1e4": "Table 4, MMD in units of 1e-4 as printed; kernel, bandwidth and sample count "
    "not given, so only the ranking compares with ours",
    "ms_ssim": "Table 4, MS-SSIM; protocol not given (ours: mean over random generated pairs)",
    "log_likelihood": "Table 6, log-likelihood; unit not stated (not nats per image, see Table 7)",
    "recon": "Table 6, reconstruction error (printed x0.001); unit not stated",
    "elbo": "Table 6, ELBO; unit not stated (the scale of its log-likelihood)",
    "kl": "Table 6, KL divergence; unit not stated",
    "log_px_nats": "Table 7, lower bound on log p(x), nats per MNIST image",
}

# What the ranking comparison cites, per dataset (the tables with several models on a metric).
PAPER_SOURCE: dict[str, str] = {"mnist": "Sagar 2020, Table 4 (MNIST)"}
