"""Pictures of a model while it trains, written to its run folder's ``samples/``: a grid (or a scatter
plot) of its samples, or a noise-aware classifier's test accuracy against the noise level."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from .generation import Conditioning, generate, grid_layout
from .io.images import save_accuracy_plot, save_grid, save_scatter
from .metrics.classifier import accuracy_by_timestep


def sample_grid(denoise: Callable, alpha_bar: torch.Tensor, cfg: DictConfig, data, step: int, folder: Path, device: torch.device,
                decode: Callable | None = None, cond: Conditioning | None = None) -> Path:
    """``trainer.num_grid`` samples of ``cfg.sampler`` with ``trainer.sample_steps`` steps (``cond``: what a conditional
    model is asked for), as ``step_<step>.png``; ``decode`` maps latents to pixels first (latent diffusion)."""
    tc = cfg.trainer
    steps = min(tc.sample_steps, len(alpha_bar))
    gen = generate(denoise, alpha_bar, cfg.sampler, steps, tc.num_grid, data.shape, seed=cfg.seed, device=device,
                   bounded=data.levels is not None, cond=cond)
    samples = decode(gen.samples) if decode is not None else gen.samples
    path = folder / f"step_{step:08d}.png"
    folder.mkdir(exist_ok=True)
    run = folder.parent  # the run folder, named as sample grids name it: <date>/<time>
    title = f"{run.parent.name}/{run.name} step {step} (EMA): {gen.sampler}, {steps} steps, NFE {gen.nfe}"
    if data.is_image:
        layout = grid_layout(cond.labels if cond is not None else None, cond.prompts if cond is not None else None, title)
        save_grid(samples, path, **layout)
    else:
        save_scatter(samples, path, reference=data.test, title=title)
    return path


def accuracy_plot(classify: Callable, alpha_bar: torch.Tensor, data, seed: int, step: int, folder: Path, device: torch.device) -> tuple[Path, dict]:
    """Test accuracy at 11 timesteps (fixed noise) plotted as ``accuracy_<step>.png``; returns the path and ``{t: accuracy}``."""
    acc = accuracy_by_timestep(classify, alpha_bar, data.test.to(device), data.test_labels.to(device), seed)
    path = folder / f"accuracy_{step:08d}.png"
    folder.mkdir(exist_ok=True)
    save_accuracy_plot(list(acc), list(acc.values()), path, 1 / data.num_classes, title=f"noise-aware classifier, step {step}")
    return path, acc
