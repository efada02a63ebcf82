"""Likelihoods of a diffusion model: the variational bound (bits/dim) and the probability-flow ODE.

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
from typing import Callable, Optional

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


def prior_nats(x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
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


def _drift_and_divergence(denoise: Callable, y: torch.Tensor, sigma: float, probes: Optional[torch.Tensor]):
    """f = dy/ds = c^2 y - c D(y / c, sigma) with c = (1 + sigma^2)^(-1/2), and div_y f per item.

    (From dx/ds = x - D(x, sigma) for x = y / c and s = log sigma, using dc/ds = -sigma^2 c^3.)  ``probes`` None: the exact trace (one vector-Jacobian product
    per dimension); otherwise Hutchinson's estimate E[e^T (df/dy) e] over the given Rademacher
    probes ``[P, N, ...]``.
    """
    c = (1 + sigma**2) ** -0.5
    sig = torch.full((len(y),), sigma, dtype=torch.float64, device=y.device)
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        f = c**2 * y - c * denoise(y / c, sig)
        flat = f.flatten(1)
        div = torch.zeros(len(y), dtype=y.dtype, device=y.device)
        if probes is None:
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), y, retain_graph=True)
                div += g.flatten(1)[:, i]
        else:
            for k, e in enumerate(probes):
                (g,) = torch.autograd.grad((f * e).sum(), y, retain_graph=k < len(probes) - 1)
                div += (g * e).flatten(1).sum(1) / len(probes)
    return f.detach(), div.detach()


def ode_log_likelihood(denoise: Callable, x: torch.Tensor, sigma_min: float, sigma_max: float, steps: int = 64,
                       probes: Optional[int] = None, generator: Optional[torch.Generator] = None,
                       prior_logp: Optional[Callable] = None) -> torch.Tensor:
    """log p_{sigma_min}(x) per item ``[N]`` in nats under the model's probability-flow ODE (Song et al. 2021, App. D).

    In x = x0 + sigma eps and s = log sigma the ODE is dx/ds = x - D(x, sigma); along its solution
    d log p_s(x(s)) / ds = -div f, so log p_{sigma_min}(x) = log p_{sigma_max}(x(sigma_max)) + int div f ds.
    It is solved in the VP variable y = x / sqrt(1 + sigma^2), which stays O(1) where x grows
    like sigma, with Heun's method over ``steps`` equal steps in log sigma (2 * steps evaluations
    of D), and changed back to x (log p_x = log p_y + dims log c).  The prior is N(0, sigma_max^2 I)
    in x unless ``prior_logp(x)`` is given (exact only for sigma_max >> the data's scale).
    ``probes`` None: exact divergence (small dimensions); an int: Hutchinson's estimator with
    that many Rademacher probes, fixed along the path.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    eps = None
    if probes is not None:
        eps = (torch.randint(0, 2, (probes, *x.shape), generator=generator) * 2 - 1).to(x)
    sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), steps + 1, dtype=torch.float64).exp().tolist()
    c = lambda sigma: (1 + sigma**2) ** -0.5
    d = x[0].numel()
    y = x * c(sigma_min)
    integral = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    f, div = _drift_and_divergence(denoise, y, sigmas[0], eps)
    for i in range(steps):
        h = math.log(sigmas[i + 1] / sigmas[i])
        f_next, div_next = _drift_and_divergence(denoise, y + h * f, sigmas[i + 1], eps)
        y = y + h / 2 * (f + f_next)
        integral += h / 2 * (div + div_next)
        if i < steps - 1:
            f, div = _drift_and_divergence(denoise, y, sigmas[i + 1], eps)
    x_max = y / c(sigma_max)
    if prior_logp is None:
        prior = -0.5 * (x_max.flatten(1) ** 2).sum(1) / sigma_max**2 - 0.5 * d * math.log(2 * math.pi * sigma_max**2)
    else:
        prior = prior_logp(x_max)
    # log p_x(x_min) = log p_y(y_min) + d log c_min;  log p_y(y_max) = log p_x(x_max) - d log c_max
    return prior - d * math.log(c(sigma_max)) + integral + d * math.log(c(sigma_min))


def dequantized_bits_per_dim(nll_nats: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
    """Bits/dim of discrete data from the NLL of uniformly dequantised points in [-1, 1].

    P(bin) >= exp(E_u log p(x + u)) * width^dims with bin width 2 / (levels - 1), so
    -log2 P / dims <= nll / (dims ln 2) - log2(width)  (Theis et al. 2016; Ho et al. 2019).
    """
    return nll_nats / (dims * math.log(2.0)) - math.log2(2.0 / (levels - 1))
