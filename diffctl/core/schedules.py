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

from .registry import Registry

# Names are part of the CLI (``schedule=<name>``, ``sampler.spacing=<name>``) and never change once released.
# A schedule is ``fn(timesteps, *, <its published constants>) -> alpha_bar [T]``; a spacing is
# ``fn(alpha_bar, steps, rho) -> sigmas [steps + 1]``.
SCHEDULES = Registry("schedule")
SPACINGS = Registry("spacing")


@SCHEDULES.register("linear")
def alpha_bar_linear(timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM (Ho et al. 2020, Sec. 4): betas linear from 1e-4 to 0.02 over T steps, float64 ``[T]``."""
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)  # alpha_bar_t = prod_{s<=t} (1 - beta_s)


@SCHEDULES.register("cosine")
def alpha_bar_cosine(timesteps: int, *, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): f(t) = cos^2(((t/T + s) / (1 + s)) pi/2).

    betas = 1 - f(t)/f(t-1), clipped at ``max_beta`` to avoid the singularity at t = T.
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)  # iDDPM eq. 17 and the clip below it
    return torch.cumprod(1.0 - betas, dim=0)


@SCHEDULES.register("scaled_linear")
def alpha_bar_scaled_linear(timesteps: int, *, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Latent diffusion (Rombach et al. 2022): sqrt(beta) linear, beta_t = (lerp(sqrt b0, sqrt b1))^2."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@SCHEDULES.register("sigmoid")
def alpha_bar_sigmoid(timesteps: int, *, start: float = -3.0, end: float = 3.0, tau: float = 1.0, clip_min: float = 1e-9) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023, Algorithm 1, "sigmoid_schedule").

    gamma(t) = (sigmoid(end / tau) - sigmoid((t (end - start) + start) / tau)) / (sigmoid(end / tau) - sigmoid(start / tau)),
    the continuous alpha_bar at t = i / T, i = 1..T, clipped below at ``clip_min``.
    """
    t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64)), torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    gamma = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)  # Chen 2023, Alg. 1
    return gamma.clamp(min=clip_min)


@SCHEDULES.register("edm")
def alpha_bar_edm(timesteps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM noise levels (Karras et al. 2022, eq. 5) as a VP schedule: alpha_bar = 1 / (1 + sigma^2).

    sigma_i = (sigma_min^(1/rho) + i/(T-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, increasing in t,
    so the network is conditioned on a continuous, rho-warped index of log sigma.
    """
    ramp = torch.linspace(0, 1, timesteps, dtype=torch.float64)
    sigmas = (sigma_min ** (1 / rho) + ramp * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho  # EDM eq. 5
    return 1 / (1 + sigmas**2)


def rescale_zero_terminal_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so that its last value is 0.

    sqrt(alpha_bar_1) is kept.  The exact terminal zero (sigma = infinity) is replaced by the
    log-linear extrapolation of its two predecessors, a_T = a_{T-1}^2 / a_{T-2}, or the original
    a_T if that is smaller: the schedule stays strictly decreasing and sigma_max finite (~3e4 for
    linear), far beyond the data scale.
    """
    s = alpha_bar.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    a = ((s - sT) * s0 / (s0 - sT)) ** 2  # Alg. 1: shift so the last is 0, scale so the first is unchanged
    a[-1] = torch.minimum(a[-2] ** 2 / a[-3], alpha_bar[-1]) if len(a) >= 3 else alpha_bar[-1]
    return a


def make_alpha_bar(name: str, timesteps: int, zero_terminal_snr: bool = False, **params) -> torch.Tensor:
    """Look a schedule up by its registry name; ``params`` are its published constants."""
    if timesteps < 2:
        raise ValueError(f"schedule.timesteps must be >= 2, got {timesteps}")
    alpha_bar = SCHEDULES[name](timesteps, **params)
    return rescale_zero_terminal_snr(alpha_bar) if zero_terminal_snr else alpha_bar


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


def timesteps_leading(timesteps: int, steps: int) -> torch.Tensor:
    """DDIM / Stable Diffusion "leading": 0, k, 2k, ... with k = T // steps (never reaches T-1)."""
    k = timesteps // steps
    return torch.arange(steps, dtype=torch.long).flip(0) * k


def timesteps_trailing(timesteps: int, steps: int) -> torch.Tensor:
    """Lin et al. 2024, Table 2 "trailing": T-1, T-1-k, ...; always starts at the last timestep."""
    k = timesteps / steps
    return (torch.round(timesteps - torch.arange(steps, dtype=torch.float64) * k) - 1).long()


def timesteps_linspace(timesteps: int, steps: int) -> torch.Tensor:
    """Evenly spaced from T-1 down to 0, both ends included (rounded)."""
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()


def sigmas_at(alpha_bar: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Noise levels at the visited timesteps, with the final 0 appended: float64 ``[steps + 1]``."""
    sig = sigmas_from_alpha_bar(alpha_bar.double())[timesteps]
    return torch.cat([sig, sig.new_zeros(1)])


def _at_timesteps(pick):
    def spacing(alpha_bar: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
        if not 1 <= steps <= len(alpha_bar):
            raise ValueError(f"steps must be in [1, {len(alpha_bar)}], got {steps}")
        return sigmas_at(alpha_bar, pick(len(alpha_bar), steps))

    spacing.__doc__ = f"The noise levels of the training timesteps of ``{pick.__name__}``."
    return spacing


for _name, _pick in (("leading", timesteps_leading), ("trailing", timesteps_trailing), ("linspace", timesteps_linspace)):
    SPACINGS.register(_name)(_at_timesteps(_pick))


def sigmas_karras(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: steps noise levels from sigma_max down to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    max_r, min_r = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sig = (max_r + ramp * (min_r - max_r)) ** rho  # EDM eq. 5
    return torch.cat([sig, sig.new_zeros(1)])


@SPACINGS.register("karras")
def spacing_karras(alpha_bar: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
    """EDM's rho-warped noise levels between the schedule's smallest and largest sigma (any step count)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sig = sigmas_from_alpha_bar(alpha_bar.double())
    return sigmas_karras(sig[0].item(), sig[-1].item(), steps, rho)


def sampling_sigmas(spacing: str, alpha_bar: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
    """The decreasing noise levels ``[steps + 1]`` (ending in 0) a sampler visits on a schedule.

    ``leading | trailing | linspace`` pick training timesteps; ``karras`` spaces noise levels
    between the schedule's smallest and largest sigma with EDM's rho-warping.
    """
    return SPACINGS[spacing](alpha_bar, steps, rho)


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
