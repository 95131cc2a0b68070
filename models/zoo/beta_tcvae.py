"""beta-TCVAE: Chen et al. 2018, "Isolating Sources of Disentanglement in Variational Autoencoders".

The KL term of the ELBO, averaged over the data, splits into three (eq. 2):

    E_p(n)[KL(q(z|n) || p(z))] = I_q(z; n)                      index-code mutual information
                               + KL(q(z) || prod_d q(z_d))      total correlation (TC)
                               + sum_d KL(q(z_d) || p(z_d))     dimension-wise KL

and beta-TCVAE weights them alpha, beta, gamma (eq. 4; the paper's experiments use
alpha = gamma = 1 and beta > 1, penalising only the TC more than the ELBO does). The aggregate
posterior q(z) = 1/N sum_n q(z|n) needs the whole data set; the minibatch-weighted sampling
(MWS) estimator of section 4.1 (appendix C.1) replaces it with the batch of M:

    log q(z(n_i)) ~= logsumexp_j log q(z(n_i) | n_j) - log(N M)

and the same per dimension for log q(z_d). That is the log-density of the batch's own mixture
1/M sum_j q(z | n_j) minus log N, so against the terms of that mixture the estimates carry
constants: TC (D - 1) log N higher, MI log N higher, dimension-wise KL D log N lower (D the
latent size). The constants cancel in the sum (still exactly E[log q(z|x) - log p(z)]) and
none depends on the parameters: N moves the logged terms, never the gradients.

Under data-parallel training (torchrun) each process estimates from its own shard of the batch,
so M is the per-process batch: still the MWS estimator, with the higher variance of a smaller
M. Gathering z, mu and logvar across processes would restore the full batch; not done here.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor
from torch.distributions import Normal

from models.config import NetConfig
from models.zoo import register
from models.zoo.vae import VAE


class BetaTCVAEConfig(NetConfig):
    """beta-TCVAE (Chen et al. 2018, eq. 4): weights of the three KL terms of eq. 2."""

    alpha: float = Field(1.0, ge=0.0, description="index-code mutual information weight")
    beta: float = Field(6.0, ge=0.0, description="total correlation weight (paper: beta > 1)")
    gamma: float = Field(1.0, ge=0.0, description="dimension-wise KL weight")
    dataset_size: int = Field(
        60000,
        ge=1,
        description=(
            "N of the minibatch-weighted sampling estimator (section 4.1); default: the MNIST "
            "training set. It shifts the logged mi/tc/dwkl by constants and leaves the "
            "gradients unchanged"
        ),
    )


def mws_decomposition(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int
) -> dict[str, Tensor]:
    """Minibatch-weighted-sampling estimates of eq. 2's three terms, nats per sample.

    ``z``, ``mu``, ``logvar``: (M, D), z_i drawn from q(z | n_i) = N(mu_i, exp(logvar_i)).
    Returns scalars (batch means) {"mi", "tc", "dwkl"}: E[log q(z|n) - log q(z)],
    E[log q(z) - sum_d log q(z_d)] and E[sum_d log q(z_d) - log p(z_d)] with p = N(0, I) and
    log q(z), log q(z_d) by the MWS estimator (Chen et al. 2018, section 4.1); their sum is the
    Monte-Carlo KL E[log q(z|n) - log p(z)]. Computed in at least fp32.
    """
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    z, mu, std = z.to(dtype), mu.to(dtype), (0.5 * logvar.to(dtype)).exp()
    m = z.shape[0]
    # [i, j, d] = log q(z_i,d | n_j): (M, 1, D) against (1, M, D) -> (M, M, D)
    log_q_pairs = Normal(mu.unsqueeze(0), std.unsqueeze(0)).log_prob(z.unsqueeze(1))
    log_norm = math.log(dataset_size * m)
    log_q_cond = Normal(mu, std).log_prob(z).sum(1)  # (M,)
    log_qz = torch.logsumexp(log_q_pairs.sum(2), dim=1) - log_norm  # (M, M) -> (M,)
    log_qz_prod = (torch.logsumexp(log_q_pairs, dim=1) - log_norm).sum(1)  # (M, D) -> (M,)
    log_pz = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)  # (M,)
    return {
        "mi": (log_q_cond - log_qz).mean(),
        "tc": (log_qz - log_qz_prod).mean(),
        "dwkl": (log_qz_prod - log_pz).mean(),
    }


@register("beta_tcvae", BetaTCVAEConfig)
class BetaTCVAE(VAE):
    """The VAE's networks with the beta-TCVAE objective (Chen et al. 2018, eq. 4); see module.

    Loss per batch: rec + alpha * mi + beta * tc + gamma * dwkl, rec = mean -log p(x|z) under
    the configured likelihood and the three terms from :func:`mws_decomposition` on the batch's
    reparameterised codes. With alpha = beta = gamma = 1 it is the negative ELBO with a
    Monte-Carlo KL.
    """

    name = "beta_tcvae"

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """{"rec", "mi", "tc", "dwkl", "kl", "total"}; ``kl`` (the analytic KL) is logged only."""
        c = self.config
        out, rec, kl = self.vae_terms(x)
        terms = mws_decomposition(out.z, out.mu, out.logvar, c.dataset_size)
        total = rec + c.alpha * terms["mi"] + c.beta * terms["tc"] + c.gamma * terms["dwkl"]
        return {"rec": rec, **terms, "kl": kl.detach(), "total": total}
