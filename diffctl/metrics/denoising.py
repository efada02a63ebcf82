"""Metrics of the denoiser on the test split, computed once per checkpoint: test_loss, vlb, ode_nll.

All three see the model only through ``ctx.denoise``, the one preconditioned denoiser D(x, sigma)
of ``core.diffusion`` (x = x0 + sigma eps); at sigma = sigma_t of a training timestep t the
network is evaluated at exactly t.
"""

from __future__ import annotations

import math

import torch

from ..core.diffusion import q_sample
from ..core.likelihood import dequantized_bits_per_dim, nats_to_bits_per_dim, ode_log_likelihood, prior_nats, vlb_term
from ..core.schedules import sigmas_from_alpha_bar
from ..progress import progress_bar
from .registry import EvalContext, always, quantised, register


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[N]`` -> broadcastable against ``[N, ...]``."""
    return values.view(-1, *([1] * (like.ndim - 1)))


@register("test_loss", always, version=2, uses_samples=False, needs_net=True)
@torch.no_grad()
def test_loss(ctx: EvalContext, per_item: int = 10) -> dict:
    """Denoising error on the test split at ``per_item`` stratified timesteps per item (fixed seed).

    ``value`` is the eps-space MSE (DDPM's L_simple), mean((x - D(x, sigma)) / sigma - eps)^2, whatever
    the model predicts, so runs with different targets compare; ``target_mse`` is the error in the
    model's own target, |D(x, sigma) - x0|^2 / c_out(sigma)^2.
    """
    g = torch.Generator().manual_seed(ctx.seed)
    x, T = ctx.data.test, len(ctx.alpha_bar)
    sigmas = sigmas_from_alpha_bar(ctx.alpha_bar.double()).to(ctx.device)
    eps_sum = target_sum = 0.0
    for k in range(per_item):
        t = ((k + torch.rand(len(x), generator=g)) / per_item * T).long().clamp(max=T - 1)  # stratified in [0, T)
        noise = torch.randn(x.shape, generator=g)
        for i in range(0, len(x), 500):
            x0, eps, sigma = x[i:i + 500].to(ctx.device).double(), noise[i:i + 500].to(ctx.device).double(), sigmas[t[i:i + 500].to(ctx.device)]
            s = _bcast(sigma, x0)
            x_s = x0 + s * eps
            x0_hat = ctx.denoise(x_s, sigma)
            c_out = ctx.denoise.coefficients(sigma)[1]
            eps_sum += ((x_s - x0_hat) / s - eps).pow(2).flatten(1).mean(1).sum().item()
            target_sum += ((x0_hat - x0).pow(2).flatten(1).mean(1) / c_out**2).sum().item()
    count = per_item * len(x)
    return {"value": eps_sum / count, "target_mse": target_sum / count, "target": ctx.denoise.prediction, "n": count}


@register("vlb", quantised, uses_samples=False, needs_net=True)
@torch.no_grad()
def vlb(ctx: EvalContext) -> dict:
    """The variational bound on the test split in bits/dim, over all T terms (DDPM eq. 5).

    Fixed reverse variance beta_tilde, x0_hat clamped to [-1, 1], a discretised Gaussian decoder
    over the dataset's levels (17 for digits, 256 for 8-bit images); one q(x_t | x0) draw per
    image and term (fixed seed).
    """
    g = torch.Generator().manual_seed(ctx.seed)
    x0 = ctx.data.test.double().to(ctx.device)
    ab = ctx.alpha_bar.double().to(ctx.device)
    sigmas = sigmas_from_alpha_bar(ab)
    dims = x0[0].numel()
    prior = prior_nats(x0, ab)
    total, decoder = prior.clone(), None
    with progress_bar("vlb over T terms", len(ab)) as advance:
        for t in range(len(ab)):
            noise = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(ctx.device)
            x_t = q_sample(x0, ab[t].expand(len(x0)), noise)
            x0_hat = ctx.denoise(x_t / ab[t].sqrt(), sigmas[t].expand(len(x0)))  # the scaled variable x0 + sigma_t eps
            term = vlb_term(x0, x_t, x0_hat.clamp(-1, 1), ab, t, ctx.data.levels)
            decoder = term if t == 0 else decoder
            total += term
            advance()
    bpd = nats_to_bits_per_dim(total, dims)
    return {"value": bpd.mean().item(), "stderr": (bpd.std() / len(bpd) ** 0.5).item(), "n": len(bpd), "levels": ctx.data.levels,
            "prior_bpd": nats_to_bits_per_dim(prior, dims).mean().item(), "decoder_bpd": nats_to_bits_per_dim(decoder, dims).mean().item(),
            "uniform_bpd": math.log2(ctx.data.levels)}


@register("ode_nll", always, uses_samples=False)
def ode_nll(ctx: EvalContext, steps: int = 64, exact_up_to: int = 16) -> dict:
    """Negative log-likelihood of the test split under the probability-flow ODE.

    Integrated from the schedule's smallest to its largest sigma (Heun, ``steps`` steps in log
    sigma); exact divergence for data of at most ``exact_up_to`` dimensions, else Hutchinson's
    estimator with one Rademacher probe per item.  Quantised images are uniformly dequantised
    and reported in bits/dim (an upper bound on the discrete NLL); continuous data in nats per
    item, with the true distribution's NLL of the same points as the floor where it is known.
    """
    g = torch.Generator().manual_seed(ctx.seed)
    x = ctx.data.test.double()
    dims = x[0].numel()
    levels = ctx.data.levels
    if levels is not None:
        x = x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * (2 / (levels - 1))
    sig = sigmas_from_alpha_bar(ctx.alpha_bar.double())
    probes = None if dims <= exact_up_to else 1
    nll = torch.cat([-ode_log_likelihood(ctx.denoise, x[i:i + 500].to(ctx.device), sig[0].item(), sig[-1].item(), steps, probes, g).cpu()
                     for i in range(0, len(x), 500)])
    out = {"n": len(nll), "steps": steps, "nfe": 2 * steps, "trace": "exact" if probes is None else "hutchinson (1 Rademacher probe)",
           "sigma_min": sig[0].item(), "sigma_max": sig[-1].item()}
    if levels is not None:
        bpd = dequantized_bits_per_dim(nll, dims, levels)
        return {"value": bpd.mean().item(), "stderr": (bpd.std() / len(bpd) ** 0.5).item(), "unit": "bits/dim", "levels": levels,
                "uniform_bpd": math.log2(levels), **out}
    result = {"value": nll.mean().item(), "stderr": (nll.std() / len(nll) ** 0.5).item(), "unit": "nats per item", **out}
    if ctx.data.oracle is not None and hasattr(ctx.data.oracle, "log_density"):
        result["floor"] = -ctx.data.oracle.log_density(ctx.data.test.double(), sigma=sig[0].item()).mean().item()
    return result
