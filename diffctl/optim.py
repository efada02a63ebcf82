"""The parts of optimisation around the training loop: the EMA of the weights, the learning-rate
schedule and classifier-free label dropout."""

from __future__ import annotations

import copy
import math

import torch
from omegaconf import DictConfig


class EMA:
    """Exponential moving average of parameters, decay warmed up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p, p = list(self.model.parameters()), list(model.parameters())
        torch._foreach_lerp_(ema_p, p, 1 - d)  # ema <- d * ema + (1 - d) * p
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)  # buffers (none in our nets today) are copied, never averaged


def lr_lambda(optim_cfg: DictConfig, total_steps: int):
    """Linear warm-up, then constant or cosine decay to ``min_lr_ratio``."""

    def f(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / optim_cfg.warmup_steps
        if optim_cfg.decay == "constant":
            return 1.0
        progress = (step - optim_cfg.warmup_steps) / max(1, total_steps - optim_cfg.warmup_steps)
        return optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def drop_labels(y: torch.Tensor, p: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free training: each label becomes the null label with probability ``p``."""
    drop = torch.rand(len(y), generator=generator).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null), y)
