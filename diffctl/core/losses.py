"""Training losses: where the noise levels of a batch come from, and how each level's error is weighed.

A loss is w(sigma) ||D(x0 + sigma eps, sigma) - x0||^2 (``Denoiser.loss``) at noise levels drawn by
the loss's own sampler.  Every weighting is defined on the x0 error, as in the papers; the
denoiser's c_out converts it to the network's output space,

    ||x0_hat - x0||^2 = c_out(sigma)^2 ||F - target||^2,   c_out = -sigma (eps), 1 (x0), -sigma s_d / sqrt(sigma^2 + s_d^2) (v)

so ``min_snr`` and ``edm`` mean the same thing whatever the model predicts.  A loss is one
registered function that returns a ``Loss``; its keyword-only parameters are its config fields.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .registry import Registry
from .schedules import sigmas_from_alpha_bar

LOSSES = Registry("loss")


@dataclass
class Loss:
    """``sigmas(n, alpha_bar, generator) -> [n]`` training noise levels; ``weight(sigma, denoiser) -> [n]`` on the x0 error."""

    sigmas: Callable
    weight: Callable


# --- weightings w(sigma) of the x0 error ------------------------------------------------------


def weight_simple(sigma: torch.Tensor, denoiser) -> torch.Tensor:
    """DDPM's L_simple (Ho et al. 2020, eq. 14): uniform weight on the network's own target, 1 / c_out^2."""
    return 1 / denoiser.coefficients(sigma)[1] ** 2


def weight_min_snr(sigma: torch.Tensor, denoiser, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023, eq. 9): w = min(SNR, gamma) on the x0 error."""
    return (1 / sigma**2).clamp(max=gamma)


def weight_edm(sigma: torch.Tensor, denoiser) -> torch.Tensor:
    """EDM (Karras et al. 2022, Table 1): lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,
    with the denoiser's sigma_data; with EDM's preconditioning lambda c_out^2 = 1."""
    sd = denoiser.sigma_data
    return (sigma**2 + sd**2) / (sigma * sd) ** 2


# --- training noise levels --------------------------------------------------------------------


def sigmas_uniform_t(n: int, alpha_bar: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """sigma_t at uniform training timesteps t ~ U{0, ..., T-1} (DDPM Algorithm 1, line 3), on alpha_bar's device."""
    t = torch.randint(0, len(alpha_bar), (n,), generator=generator, device=alpha_bar.device)
    return sigmas_from_alpha_bar(alpha_bar.double())[t]


def sigmas_lognormal(n: int, alpha_bar: torch.Tensor, generator=None, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM's training noise levels: ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1), on alpha_bar's device."""
    device = alpha_bar.device if alpha_bar is not None else generator.device if generator is not None else None  # no schedule needed
    return (torch.randn(n, generator=generator, dtype=torch.float64, device=device) * p_std + p_mean).exp()


# --- the registered losses --------------------------------------------------------------------


@LOSSES.register("simple")
def simple() -> Loss:
    """DDPM's L_simple: uniform MSE on the model's target at uniform timesteps (Ho et al. 2020, eq. 14)."""
    return Loss(sigmas_uniform_t, weight_simple)


@LOSSES.register("min_snr")
def min_snr(*, gamma: float = 5.0) -> Loss:
    """Min-SNR-gamma (Hang et al. 2023) at uniform timesteps."""
    return Loss(sigmas_uniform_t, functools.partial(weight_min_snr, gamma=gamma))


@LOSSES.register("edm")
def edm(*, p_mean: float = -1.2, p_std: float = 1.2) -> Loss:
    """EDM (Karras et al. 2022): lambda(sigma) weighting at lognormal noise levels ln sigma ~ N(p_mean, p_std^2)."""
    return Loss(functools.partial(sigmas_lognormal, p_mean=p_mean, p_std=p_std), weight_edm)
