"""Training losses: they take the network and return one value per sample.

The weighting of the per-sample loss and the distribution of training timesteps are kept
apart from the loss itself, so min-SNR / EDM weightings and learned-variance terms can be
added as functions beside ``simple_loss`` without touching the trainer.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .diffusion import q_sample, training_target


def sample_timesteps(n: int, timesteps: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Uniform training timesteps t ~ U{0, ..., T-1} (DDPM Algorithm 1, line 3), ``[n]``."""
    return torch.randint(0, timesteps, (n,), generator=generator, device=device)


def simple_loss(
    net: Callable,
    x0: torch.Tensor,
    t: torch.Tensor,
    alpha_bar: torch.Tensor,
    noise: torch.Tensor,
    prediction: str = "eps",
) -> torch.Tensor:
    """DDPM's L_simple (Ho et al. 2020, eq. 14), generalised to x0 / v targets: ``[N]``.

    ``|| target - net(x_t, t) ||^2`` averaged over all but the batch dimension, with
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise.
    """
    a = alpha_bar[t].to(x0.dtype)
    x_t = q_sample(x0, a, noise)
    out = net(x_t, t.to(x0.dtype))
    target = training_target(prediction, x0, noise, a)
    return (out.float() - target.float()).pow(2).flatten(1).mean(1)
