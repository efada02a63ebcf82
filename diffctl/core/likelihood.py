"""The variational bound of a discrete-time diffusion model, in bits per dimension.

Ho et al. 2020, eq. 5 (and improved DDPM, Sec. 2-3):

    L = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))            (Gaussians, fixed variance)
    L_0     = -log p(x_0 | x_1)      with a discretised Gaussian decoder over the data's levels

Index convention here: t = 0..T-1 (paper t = 1..T).  The model's reverse mean is the posterior
mean with x0 replaced by the model's x0_hat, and its variance is the posterior variance
beta_tilde (DDPM's "small" fixed variance), so every L_{t-1} is a squared error of means.
"""

from __future__ import annotations

import math

import torch


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x) under N(mean, e^(2 log_scale)) integrated over x's bin, elementwise, in nats.

    ``x`` lies on the grid of ``levels`` values spanning [-1, 1] (bin width 2 / (levels - 1));
    the outermost bins extend to -inf and +inf, so the bin probabilities sum to 1 (DDPM Sec. 3.3).
    """
    half = 1.0 / (levels - 1)
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (x - mean + half))
    cdf_min = _std_normal_cdf(inv_std * (x - mean - half))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -1 + half, log_cdf_plus, torch.where(x > 1 - half, log_one_minus_cdf_min, log_delta))


def posterior(alpha_bar: torch.Tensor, t: int, x0: torch.Tensor, x_t: torch.Tensor):
    """Mean and log-variance of q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7) for t >= 1 (0-based)."""
    a_t, a_prev = alpha_bar[t], alpha_bar[t - 1]
    beta = 1 - a_t / a_prev
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t  # eq. 7
    var = (1 - a_prev) / (1 - a_t) * beta  # beta_tilde
    return mean, var.log()


def prior_bits(x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """L_T per item ``[N]`` in nats: KL(q(x_T | x_0) || N(0, I))."""
    a = alpha_bar[-1]
    kl = normal_kl(a.sqrt() * x0, (1 - a).log().expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.flatten(1).sum(1)


def vlb_term(x0: torch.Tensor, x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_bar: torch.Tensor, t: int, levels: int) -> torch.Tensor:
    """L_{t-1} (t >= 1) or the decoder term L_0 (t = 0) per item ``[N]``, in nats.

    ``x_t`` is a draw of q(x_t | x0); ``x0_hat`` the model's estimate of x0 from it.
    """
    if t == 0:
        # decoder: mean = posterior mean at t = 1 with x0_hat, which is x0_hat itself; its variance is
        # beta_tilde_1 clipped as in improved DDPM (beta_tilde at t = 1 is 0)
        _, logvar = posterior(alpha_bar, 1, x0, x_t)
        ll = discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * logvar.expand_as(x0), levels)
        return -ll.flatten(1).sum(1)
    mean_q, logvar = posterior(alpha_bar, t, x0, x_t)
    mean_p, _ = posterior(alpha_bar, t, x0_hat, x_t)
    return normal_kl(mean_q, logvar.expand_as(x0), mean_p, logvar.expand_as(x0)).flatten(1).sum(1)


def nats_to_bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    return nats / (dims * math.log(2.0))
