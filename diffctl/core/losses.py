"""Training losses: they take the network and return one value per sample.

A loss is the squared error of the network's target (eps, x0 or v) times a weight w(sigma),
at noise levels drawn by the loss's own sampler.  Every weighting is defined on the x0 error,
as in the papers, and converted to the target space with ``x0_error_scale``:

    ||x0_hat - x0||^2 = c(sigma)^2 ||out - target||^2,   c = sigma (eps), 1 (x0), sigma / sqrt(1 + sigma^2) (v)

so ``min_snr`` and ``edm`` mean the same thing whatever the model predicts.  A loss with extra
terms (the hybrid loss of improved DDPM with learned variances) is one more function of the
same signature beside these.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .diffusion import q_sample, training_target
from .schedules import sigma_to_t, sigmas_from_alpha_bar


def sample_timesteps(n: int, timesteps: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform training timesteps t ~ U{0, ..., T-1} (DDPM Algorithm 1, line 3), ``[n]``."""
    return torch.randint(0, timesteps, (n,), generator=generator)


def x0_error_scale(prediction: str, sigma: torch.Tensor) -> torch.Tensor:
    """c(sigma) with x0_hat - x0 = c (out - target) for the scaled variable x = x0 + sigma eps."""
    if prediction == "eps":
        return sigma
    if prediction == "x0":
        return torch.ones_like(sigma)
    if prediction == "v":
        return sigma / (1 + sigma**2).sqrt()
    raise ValueError(f"unknown prediction {prediction!r}")


# --- weightings w(sigma) of the x0 error ------------------------------------------------------


def weight_simple(sigma: torch.Tensor, prediction: str) -> torch.Tensor:
    """DDPM's L_simple (Ho et al. 2020, eq. 14): uniform weight on the target's squared error."""
    return 1 / x0_error_scale(prediction, sigma) ** 2


def weight_min_snr(sigma: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023, eq. 9): w = min(SNR, gamma) on the x0 error."""
    return (1 / sigma**2).clamp(max=gamma)


def weight_edm(sigma: torch.Tensor, prediction: str, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM (Karras et al. 2022, Table 1): lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


# --- training noise levels --------------------------------------------------------------------


def sigmas_uniform_t(n: int, alpha_bar: torch.Tensor, generator=None) -> torch.Tensor:
    """sigma_t at uniform discrete timesteps (DDPM Algorithm 1)."""
    t = sample_timesteps(n, len(alpha_bar), generator=generator)
    return sigmas_from_alpha_bar(alpha_bar.double())[t]


def sigmas_lognormal(n: int, alpha_bar: torch.Tensor, generator=None, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM's training noise levels: ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1)."""
    return (torch.randn(n, generator=generator, dtype=torch.float64) * p_std + p_mean).exp()


LOSSES = {
    # name: (training noise-level sampler, weighting); config keys go to whichever takes them
    "simple": (sigmas_uniform_t, weight_simple),
    "min_snr": (sigmas_uniform_t, weight_min_snr),
    "edm": (sigmas_lognormal, weight_edm),
}


def _noised(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor):
    """x_t ~ q(x_t | x_0) at noise level sigma (alpha_bar = 1 / (1 + sigma^2)), its continuous timestep, alpha_bar."""
    a = 1 / (1 + sigma**2)
    t = sigma_to_t(sigma, alpha_bar.to(x0.device)).to(x0.dtype)
    return q_sample(x0, a.to(x0.dtype), noise), t, a


def weighted_loss(
    net: Callable,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    prediction: str = "eps",
    weight: Callable = weight_simple,
) -> torch.Tensor:
    """w(sigma) c(sigma)^2 ||net(x_t, t(sigma)) - target||^2 averaged over all but the batch: ``[N]``.

    x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise with alpha_bar = 1 / (1 + sigma^2); the
    network is conditioned on the (possibly fractional) training timestep of sigma.
    """
    sigma = sigma.to(x0.device, torch.float64)
    x_t, t, a = _noised(x0, sigma, noise, alpha_bar)
    out = net(x_t, t)
    target = training_target(prediction, x0, noise, a.to(x0.dtype))
    w = (weight(sigma, prediction) * x0_error_scale(prediction, sigma) ** 2).float()
    return w * (out.float() - target.float()).pow(2).flatten(1).mean(1)


def classifier_loss(net: Callable, x0: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                    alpha_bar: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a noise-aware classifier ``net(x_t, t) -> logits`` on x_t ~ q(x_t | x_0) at noise
    level sigma (Dhariwal & Nichol 2021, trained on all timesteps): ``[N]``."""
    x_t, t, _ = _noised(x0, sigma.to(x0.device, torch.float64), noise, alpha_bar)
    return torch.nn.functional.cross_entropy(net(x_t, t).float(), y, reduction="none")
