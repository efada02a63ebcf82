"""Noise schedules as data, and sampling discretisations apart from them.

A discrete variance-preserving (VP) schedule is the tensor ``alpha_bar[t]`` for the training
timesteps t = 0..T-1 (paper index t = 1..T).  Everything else follows from it:

    beta_t      = 1 - alpha_bar_t / alpha_bar_{t-1}
    SNR_t       = alpha_bar_t / (1 - alpha_bar_t)
    sigma_t     = sqrt((1 - alpha_bar_t) / alpha_bar_t)      (noise level, x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps)

Samplers never see timesteps: they see a decreasing tensor of noise levels ``sigmas`` ending
in 0 (k-diffusion convention).  ``timesteps_<spacing>`` pick which training timesteps a sampler
visits; ``sigmas_at`` turns them into noise levels.  So any sampler runs on any schedule.
"""

from __future__ import annotations

import math

import torch

# Names are part of the CLI (``schedule=<name>``) and never change once released.
SCHEDULES: dict = {}
SPACINGS: dict = {}


def _register(table: dict, name: str):
    def deco(fn):
        table[name] = fn
        return fn

    return deco


@_register(SCHEDULES, "linear")
def alpha_bar_linear(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM (Ho et al. 2020, Sec. 4): betas linear from 1e-4 to 0.02 over T steps, float64 ``[T]``."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)  # alpha_bar_t = prod_{s<=t} (1 - beta_s)


@_register(SCHEDULES, "cosine")
def alpha_bar_cosine(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): f(t) = cos^2(((t/T + s) / (1 + s)) pi/2).

    betas = 1 - f(t)/f(t-1), clipped at ``max_beta`` to avoid the singularity at t = T.
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)  # iDDPM eq. 17 and the clip below it
    return torch.cumprod(1.0 - betas, dim=0)


def make_alpha_bar(name: str, timesteps: int, **params) -> torch.Tensor:
    """Look a schedule up by its registry name; ``params`` are its published constants."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    if timesteps < 2:
        raise ValueError(f"schedule.timesteps must be >= 2, got {timesteps}")
    return SCHEDULES[name](timesteps, **params)


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, with alpha_bar_{-1} = 1."""
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / prev


def sigmas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Noise level sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) = 1 / sigma_t^2."""
    return alpha_bar / (1 - alpha_bar)


# --- Sampling discretisations: which of the T training timesteps a sampler visits -----------


@_register(SPACINGS, "leading")
def timesteps_leading(timesteps: int, steps: int) -> torch.Tensor:
    """DDIM / Stable Diffusion "leading": 0, k, 2k, ... with k = T // steps (never reaches T-1)."""
    k = timesteps // steps
    return torch.arange(steps, dtype=torch.long).flip(0) * k


@_register(SPACINGS, "trailing")
def timesteps_trailing(timesteps: int, steps: int) -> torch.Tensor:
    """Lin et al. 2024, Table 2 "trailing": T-1, T-1-k, ...; always starts at the last timestep."""
    k = timesteps / steps
    return (torch.round(timesteps - torch.arange(steps, dtype=torch.float64) * k) - 1).long()


@_register(SPACINGS, "linspace")
def timesteps_linspace(timesteps: int, steps: int) -> torch.Tensor:
    """Evenly spaced from T-1 down to 0, both ends included (rounded)."""
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()


def sampling_timesteps(spacing: str, timesteps: int, steps: int) -> torch.Tensor:
    """The decreasing training timesteps ``[steps]`` a sampler with ``steps`` steps visits."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {sorted(SPACINGS)}")
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    return SPACINGS[spacing](timesteps, steps)


def sigmas_at(alpha_bar: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Noise levels at the visited timesteps, with the final 0 appended: float64 ``[steps + 1]``."""
    sig = sigmas_from_alpha_bar(alpha_bar.double())[timesteps]
    return torch.cat([sig, sig.new_zeros(1)])


def sigma_to_t(sigma: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Continuous timestep for a noise level: linear interpolation in log sigma (k-diffusion).

    Exact (an integer) at every training timestep; used to condition a network trained on
    discrete t with an arbitrary noise level.
    """
    log_sigmas = sigmas_from_alpha_bar(alpha_bar.double()).log()  # increasing in t
    log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    lo = hi - 1
    w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return (lo + w).to(sigma.dtype)
