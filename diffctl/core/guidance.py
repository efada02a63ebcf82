"""Steering a denoiser: classifier-free guidance, classifier guidance and masked editing (inpainting).

Everything is a wrapper that returns another D(x, sigma), so every sampler works with it.
``denoise(x, sigma, y)`` is a conditional denoiser where the condition ``null`` means "unconditional"
(what a classifier-free model was trained with when its condition was dropped: the null label, or the
token ids of the empty prompt).
"""

from __future__ import annotations

from typing import Callable

import torch


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, *([1] * (like.ndim - 1)))


def classifier_free(denoise: Callable, labels: torch.Tensor, null, scale: float, rescale: float = 0.0) -> Callable:
    """D_w = D(x, sigma, null) + w (D(x, sigma, y) - D(x, sigma, null))  (Ho & Salimans 2022).

    ``labels`` ``[N, ...]``: each image's condition (class labels ``[N]`` or token ids ``[N, L]``); ``null``: one
    item's null condition (the null label, or the empty prompt's ids), broadcast over the batch.
    w = 1 is the conditional model, w = 0 the unconditional one (one network pass each); other w
    run both in one batch.  The combination is the same in x0, eps or v space (all affine in the
    output for fixed x and sigma).  ``rescale`` = phi in [0, 1] (Lin et al. 2024, Alg. 2, on the
    eps prediction): eps_cfg is scaled per item to the std of eps_cond, and mixed as
    phi * rescaled + (1 - phi) * eps_cfg, which counters the over-saturation of large w.
    """
    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        y = labels.to(x.device)
        if scale == 1.0:  # rescaling the conditional prediction to its own std changes nothing
            return denoise(x, sigma, y)
        y_null = torch.as_tensor(null, device=x.device).to(y.dtype).expand_as(y)
        if scale == 0.0:
            return denoise(x, sigma, y_null)
        sig = sigma.expand(len(x)) if sigma.ndim == 0 else sigma
        both = denoise(torch.cat([x, x]), torch.cat([sig, sig]), torch.cat([y, y_null]))
        cond, uncond = both.chunk(2)
        out = uncond + scale * (cond - uncond)
        if rescale:
            s = _bcast(sig, x).to(x.dtype)
            eps_cond, eps_cfg = (x - cond) / s, (x - out) / s
            dims = tuple(range(1, x.ndim))
            factor = eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True).clamp(min=1e-12)
            eps = rescale * factor * eps_cfg + (1 - rescale) * eps_cfg
            out = x - s * eps
        return out

    return guided


def classifier_guided(denoise: Callable, log_prob: Callable, labels: torch.Tensor, scale: float) -> Callable:
    """D_s(x, sigma) = D(x, sigma) + s sigma^2 grad_x log p(y | x, sigma)  (Dhariwal & Nichol 2021).

    ``log_prob(x, sigma)`` -> ``[N, K]`` log class posteriors of the noisy x (a noise-aware
    classifier).  This is their eps-space rule eps - s sqrt(1 - alpha_bar) grad_{x_t} log p written
    for x0_hat in the scaled variable x = x_0 + sigma eps: by Tweedie, E[x_0 | x] = x + sigma^2
    grad log p(x), and grad log p(x | y) = grad log p(x) + grad log p(y | x), so s = 1 with the exact
    posterior turns the unconditional denoiser into the exact class-conditional one.
    """
    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = denoise(x, sigma)
        if scale == 0.0:
            return out
        y = labels.to(x.device)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            chosen = log_prob(xg, sigma).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, xg)
        s = _bcast(sigma.expand(len(x)) if sigma.ndim == 0 else sigma, x).to(x.dtype)
        return out + scale * s**2 * grad.to(x.dtype)

    return guided


def inpainting(denoise: Callable, known: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> Callable:
    """Replacement inpainting: pixels where ``mask`` is 1 are known (``known``, the clean image).

    Before each call the known region of x is replaced by the known image noised to the current
    level, known + sigma z (``z`` one fixed normal draw per image, so the path is deterministic
    given the seed), and the returned x0 estimate carries the known pixels exactly, so every
    sampler ends (at sigma = 0) with the known pixels unchanged.
    """
    def masked(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        m, k, z = mask.to(x), known.to(x), noise.to(x)
        s = _bcast(sigma.expand(len(x)) if sigma.ndim == 0 else sigma, x).to(x.dtype)
        x_in = m * (k + s * z) + (1 - m) * x
        return m * k + (1 - m) * denoise(x_in, sigma)

    return masked


def repaint(denoise: Callable, x: torch.Tensor, sigmas: torch.Tensor, *, resample: int = 1, noise: Callable, callback=None):
    """RePaint-style resampling (Lugmayr et al. 2022) with jumps of one step: each DDPM ancestral
    step sigma_i -> sigma_{i+1} is repeated ``resample`` times, re-noising back to sigma_i in between
    (x + sqrt(sigma_i^2 - sigma_{i+1}^2) z), so the unknown region harmonises with the known one.
    ``denoise`` is usually an ``inpainting`` wrapper; resample = 1 is plain DDPM sampling.
    """
    from .samplers import sample_ddpm

    for i in range(len(sigmas) - 1):
        pair = sigmas[i:i + 2]
        for r in range(resample):
            x = sample_ddpm(denoise, x, pair, noise=noise)
            if r < resample - 1:
                x = x + (pair[0] ** 2 - pair[1] ** 2).sqrt() * noise(i)
        if callback is not None:
            callback(i, pair[0], x, None)
    return x
