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

from .registry import Registry

# A sampler's keyword-only parameters but ``noise`` and ``callback`` are its options (``sampler.<option>=``).
SAMPLERS = Registry("sampler", inputs=("noise", "callback"))


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


@SAMPLERS.register("ddim")
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


@SAMPLERS.register("ddpm")
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


@SAMPLERS.register("euler")
def sample_euler(denoise, x, sigmas, *, noise: Optional[Callable] = None, callback=None):
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM eq. 3).

    In sigma space that is exactly DDIM with eta = 0 (Karras et al. 2022, Sec. 4), so it is one.
    """
    return sample_ddim(denoise, x, sigmas, eta=0.0, noise=noise, callback=callback)


@SAMPLERS.register("euler_ancestral")
def sample_euler_ancestral(denoise, x, sigmas, *, eta: float = 1.0, noise: Optional[Callable] = None, callback=None):
    """k-diffusion's Euler-ancestral: Euler down to sigma_down, fresh noise up to sigma_next.

    Its update is DDIM's with the same eta (eq. 16 rewritten for sigmas); only the default eta differs.
    """
    return sample_ddim(denoise, x, sigmas, eta=eta, noise=noise, callback=callback)


@SAMPLERS.register("heun")
@torch.no_grad()
def sample_heun(denoise, x, sigmas, *, S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = float("inf"),
                S_noise: float = 1.0, euler_above: float = 50.0, noise: Optional[Callable] = None, callback=None):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2); deterministic Heun when S_churn = 0.

    NFE = 2 * steps - 1: the last step (to sigma = 0) is a plain Euler step (Alg. 2, line 8).  So is a step whose
    sigma shrinks by more than ``euler_above`` (a VP schedule's first step, from sigma_max ~ 1e4 to ~ 30): there the
    trapezoid's second slope, taken where the denoiser's output differs from the first's, is multiplied by the whole
    step and amplifies its error a thousandfold, while Euler's step is exact as long as D(x, sigma) stays put, as it
    does at sigma far above the data's scale (x - D grows in proportion to sigma).  EDM's sigma_max = 80 with Karras
    spacing has no such step; ``euler_above=inf`` is Algorithm 2 as published.
    """
    noise = noise or _default_noise(x)
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        gamma = min(S_churn / n, 2**0.5 - 1) if S_tmin <= sigma <= S_tmax else 0.0  # Alg. 2, line 4
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + S_noise * (sigma_hat**2 - sigma**2).sqrt() * noise(i)  # line 6
        x0 = denoise(x, sigma_hat)
        d = (x - x0) / sigma_hat  # line 7
        x_next = x + (sigmas[i + 1] - sigma_hat) * d  # line 8
        if sigmas[i + 1] > 0 and sigma_hat <= euler_above * sigmas[i + 1]:
            d_next = (x_next - denoise(x_next, sigmas[i + 1])) / sigmas[i + 1]  # line 10
            x_next = x + (sigmas[i + 1] - sigma_hat) * (d + d_next) / 2  # line 11
        x = x_next
        if callback is not None:
            callback(i, sigma, x, x0)
    return x


@SAMPLERS.register("dpmpp_2m_sde")
@torch.no_grad()
def sample_dpmpp_2m_sde(denoise, x, sigmas, *, eta: float = 1.0, s_noise: float = 1.0, noise: Optional[Callable] = None, callback=None):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b; k-diffusion's midpoint variant), noise scaled by ``eta``."""
    noise = noise or _default_noise(x)  # drawn only when eta > 0
    old_x0, h_last = None, None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x0
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x - torch.expm1(-h - eta_h) * x0
            if old_x0 is not None:
                x = x - 0.5 * torch.expm1(-h - eta_h) * (h / h_last) * (x0 - old_x0)
            if eta > 0:
                x = x + noise(i) * sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
            h_last = h
        old_x0 = x0
        if callback is not None:
            callback(i, sigmas[i], x, x0)
    return x


@SAMPLERS.register("dpmpp_2m")
def sample_dpmpp_2m(denoise, x, sigmas, *, noise: Optional[Callable] = None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): the SDE variant with eta = 0.

    x = (s'/s) x - (e^-h - 1) D,  D = (1 + 1/2r) x0 - 1/2r x0_prev,  r = h_prev / h, h = log(s / s');
    first order at the first step and a plain x0 at the last.
    """
    return sample_dpmpp_2m_sde(denoise, x, sigmas, eta=0.0, noise=noise, callback=callback)


def _unipc_step(x, x0s, lambdas, sigma, sigma_next, lambda_next, order, x0_new=None):
    """One UniP-p predictor step, or with ``x0_new`` the UniC-p corrector (Zhao et al. 2023, Alg. 1-2, B(h) = e^h - 1).

    ``x0s`` / ``lambdas``: data predictions and their lambda = -log sigma, newest last.
    """
    m0, l0 = x0s[-1], lambdas[-1]
    h = lambda_next - l0
    hh = -h  # data-prediction form
    h_phi_1 = torch.expm1(hh)
    B_h = h_phi_1  # "bh2"
    x_first = (sigma_next / sigma) * x - h_phi_1 * m0  # first-order (DDIM / DPM-Solver++ 1) step
    rks = [(lambdas[-1 - k] - l0) / h for k in range(1, order)]
    D1s = [(x0s[-1 - k] - m0) / rk for k, rk in enumerate(rks, start=1)]
    rks = torch.stack([*rks, torch.ones_like(h)])
    R, b, h_phi_k, fact = [], [], h_phi_1 / hh - 1, 1
    for i in range(1, order + 1):  # the order conditions, UniPC eq. (9)
        R.append(rks ** (i - 1))
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = torch.stack(R), torch.stack(b)
    if x0_new is None:
        if order == 1:
            return x_first
        rhos = [torch.tensor(0.5, dtype=b.dtype)] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        return x_first - B_h * sum(r * d for r, d in zip(rhos, D1s))
    rhos = torch.tensor([0.5], dtype=b.dtype) if order == 1 else torch.linalg.solve(R, b)
    return x_first - B_h * (sum(r * d for r, d in zip(rhos[:-1], D1s)) + rhos[-1] * (x0_new - m0))


@SAMPLERS.register("unipc")
@torch.no_grad()
def sample_unipc(denoise, x, sigmas, *, order: int = 2, noise: Optional[Callable] = None, callback=None):
    """UniPC (Zhao et al. 2023), bh2, multistep UniP-``order`` predictor + UniC corrector.

    The corrector reuses the model evaluation of the next step, so NFE = steps; lower orders
    warm up the history and the final step is first order.
    """
    n = len(sigmas) - 1
    lambdas_all = -sigmas.log()
    x0s, lambdas, x_prev, last_order = [], [], None, 1
    for i in range(n):
        x0 = denoise(x, sigmas[i])
        if x_prev is not None:  # UniC: correct x with the fresh x0 before stepping on
            x = _unipc_step(x_prev, x0s, lambdas, sigmas[i - 1], sigmas[i], lambdas_all[i], last_order, x0_new=x0)
        x0s, lambdas = (x0s + [x0])[-order:], (lambdas + [lambdas_all[i]])[-order:]
        last_order = min(order, len(x0s), n - i)
        x_prev = x
        x = _unipc_step(x, x0s, lambdas, sigmas[i], sigmas[i + 1], lambdas_all[i + 1], last_order)
        if callback is not None:
            callback(i, sigmas[i], x, x0)
    return x
