"""Pictures of a model while it trains, written to its run folder's ``samples/``: a grid (or a scatter
plot) of its samples, or a noise-aware classifier's test accuracy against the noise level."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from .generation import Conditioning, class_columns, generate
from .io.images import save_accuracy_plot, save_grid, save_scatter
from .metrics.classifier import accuracy_by_timestep


def sample_grid(denoise: Callable, alpha_bar: torch.Tensor, cfg: DictConfig, data, step: int, folder: Path, device: torch.device,
                decode: Callable | None = None, cond: Conditioning | None = None) -> Path:
    """``trainer.num_grid`` samples of ``cfg.sampler`` with ``trainer.sample_steps`` steps (``cond``: what a conditional
    model is asked for), as ``step_<step>.png``; ``decode`` maps latents to pixels first (latent diffusion)."""
    tc = cfg.trainer
    samples = generate(denoise, alpha_bar, cfg.sampler, min(tc.sample_steps, len(alpha_bar)), tc.num_grid, data.shape, seed=cfg.seed,
                       device=device, bounded=data.levels is not None, cond=cond).samples
    samples = decode(samples) if decode is not None else samples
    path = folder / f"step_{step:08d}.png"
    folder.mkdir(exist_ok=True)
    if data.is_image:
        save_grid(samples, path, nrow=class_columns(cond.labels if cond is not None else None),
                  title=f"step {step}: {cfg.sampler.name}, {min(tc.sample_steps, len(alpha_bar))} steps")
    else:
        save_scatter(samples, path, reference=data.test, title=f"step {step}")
    return path


def accuracy_plot(classify: Callable, alpha_bar: torch.Tensor, data, seed: int, step: int, folder: Path, device: torch.device) -> tuple[Path, dict]:
    """Test accuracy at 11 timesteps (fixed noise) plotted as ``accuracy_<step>.png``; returns the path and ``{t: accuracy}``."""
    acc = accuracy_by_timestep(classify, alpha_bar, data.test.to(device), data.test_labels.to(device), seed)
    path = folder / f"accuracy_{step:08d}.png"
    folder.mkdir(exist_ok=True)
    save_accuracy_plot(list(acc), list(acc.values()), path, 1 / data.num_classes, title=f"noise-aware classifier, step {step}")
    return path, acc
