"""Samplers: pure functions with one signature, in noise-level (sigma) space.

    sample_<name>(denoise, x, sigmas, *, noise=None, callback=None, **options) -> x_0

* ``denoise(x, sigma) -> x0_hat`` is the denoiser D (see ``diffusion.Denoiser``);
* ``x`` ``[N, ...]`` is the start, already at noise level ``sigmas[0]`` (x = sigma_0 * z);
* ``sigmas`` is a decreasing float64 tensor ending in 0 (``schedules.sampling_sigmas``);
* ``noise(i) -> [N, ...]`` supplies fresh standard normal noise for step i (seeded per image by
  the caller, so image k is the same whatever the batch size);
* ``callback(i, sigma, x, x0_hat)`` is called after every step (progress bars live there).

The scaled variable x = x_t / sqrt(alpha_bar_t) = x_0 + sigma eps makes the probability-flow
ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3 with s(t) = 1).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

SAMPLERS: dict = {}


def register(name: str):
    def deco(fn):
        SAMPLERS[name] = fn
        return fn

    return deco


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0):
    """Split the step sigma -> sigma_next into a deterministic part and fresh noise.

    Returns (sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2 and
    sigma_up = eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma, which is DDIM's
    sigma_t(eta) (Song et al. 2021, eq. 16) rewritten for the scaled variable.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, sigma_next * 0
    sigma_up = (eta * sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma).clamp(max=sigma_next)
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


def _default_noise(x: torch.Tensor) -> Callable[[int], torch.Tensor]:
    return lambda i: torch.randn_like(x)


@register("ddim")
@torch.no_grad()
def sample_ddim(denoise, x, sigmas, *, eta: float = 0.0, noise: Optional[Callable] = None, callback=None):
    """DDIM (Song et al. 2021, eq. 12), generalised by ``eta`` (eq. 16).

    With eta = 0 each step is x_next = x0_hat + sigma_next * eps_hat, the Euler step of the
    probability-flow ODE in sigma space; with eta = 1 it is DDPM's ancestral sampler.
    """
    noise = noise or _default_noise(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        eps = (x - x0) / sigma  # eps_hat, since x = x0 + sigma eps
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x0 + sigma_down * eps  # DDIM eq. 12: "direction pointing to x_t"
        if sigma_up > 0:
            x = x + sigma_up * noise(i)  # DDIM eq. 12: random noise term sigma_t * eps_t
        if callback is not None:
            callback(i, sigma, x, x0)
    return x


@register("ddpm")
@torch.no_grad()
def sample_ddpm(denoise, x, sigmas, *, noise: Optional[Callable] = None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) with the posterior variance beta_tilde.

    Samples q(x_next | x, x0_hat) exactly (DDPM eqs. 6-7), written for the scaled variable;
    over any subset of timesteps this is the respaced sampler of improved DDPM.
    """
    noise = noise or _default_noise(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        # Posterior q(x_next | x, x0) in scaled coordinates: mean = x0 + (sigma_next/sigma)^2 (x - x0),
        # variance = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2   (DDPM eq. 7 rescaled).
        r = (sigma_next / sigma) ** 2
        x = x0 + r * (x - x0)
        if sigma_next > 0:
            x = x + (sigma_next * (1 - r).sqrt()) * noise(i)
        if callback is not None:
            callback(i, sigma, x, x0)
    return x


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[name]
