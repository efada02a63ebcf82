"""Reverse trajectories: every state a sampler passes through, for the first few items of a ``generate`` call.

``trajectories`` runs ``generation.generate`` for items 0..count-1 and records the sampler's state after each
step (``on_step``), so the last state of trajectory i is generated item i.  ``save_sample_picture_1d`` draws them
over the forward density of 1-D data (``diffctl sample`` on dataset=gmm1d).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig

from .core.schedules import sampling_sigmas
from .generation import Conditioning, PerImageNoise, generate


@torch.no_grad()
def trajectories(denoise: Callable, alpha_bar: torch.Tensor, sampler_cfg: DictConfig, steps: int, count: int, shape: tuple, *,
                 seed: int = 0, device: torch.device = torch.device("cpu"), bounded: bool = False,
                 cond: Optional[Conditioning] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas ``[S + 1]``, states ``[S + 1, count, ...]``): the start x = sigma_0 z and the state after each of the S steps
    of items 0..count-1, in the samplers' scaled variable x = x_t / sqrt(alpha_bar_t) = x_0 + sigma eps (states[-1]: the samples)."""
    sigmas = sampling_sigmas(sampler_cfg.spacing, alpha_bar, steps, sampler_cfg.rho).to(device)
    states = [PerImageNoise(seed, 0, count, shape, device)() * sigmas[0]]  # where generate starts item i
    generate(denoise, alpha_bar, sampler_cfg, steps, count, shape, seed=seed, batch_size=count, device=device, bounded=bounded, cond=cond,
             on_step=lambda i, sigma, x, x0: states.append(x.clone()))
    return sigmas.cpu(), torch.stack(states).float().cpu()


def save_sample_picture_1d(source, cfg: DictConfig, device: torch.device, samples: torch.Tensor, path: Path,
                           cond: Optional[Conditioning] = None, count: int = 8) -> dict:
    """``diffctl sample`` on 1-D data: ``count`` reverse trajectories of the config's sampler over the forward density
    of x_t, and the samples' histogram beside the true density (``diffctl.io.plots1d``): ``{"trajectories": path}`` for
    sample.json, or ``{}`` under RePaint resampling (no single trajectory)."""
    from .io.plots1d import density_of, save_trajectories

    if cond is not None and cond.resample > 1:
        return {}
    count = min(count, cfg.num_samples)
    sigmas, states = trajectories(source.denoise, source.alpha_bar, cfg.sampler, cfg.steps, count, source.data.shape, seed=cfg.seed,
                                  device=device, bounded=source.data.levels is not None, cond=cond)
    mixture, label = density_of(source.data)
    save_trajectories(mixture, source.alpha_bar, sigmas, states, samples, path, label=label,
                      title=f"{cfg.sampler.name}, {cfg.steps} steps: {count} reverse trajectories over the forward density")
    return {"trajectories": str(path)}
