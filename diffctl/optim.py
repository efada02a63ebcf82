"""The parts of optimisation around the training loop: the EMA of the weights, the learning-rate
schedule and classifier-free label dropout."""

from __future__ import annotations

import copy
import math

import torch
from omegaconf import DictConfig


class EMA:
    """Exponential moving average of parameters, decay warmed up as min(decay, (1 + n) / (10 + n)).

    The count n of updates lives on the model's device, and ``update(model, ok)`` takes the step's
    verdict as a device tensor: a skipped step leaves the average untouched without the host looking."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay = decay
        self._n = torch.zeros((), dtype=torch.long, device=next(model.parameters()).device)

    @property
    def updates(self) -> int:
        return int(self._n)

    @updates.setter
    def updates(self, n: int) -> None:
        self._n.fill_(n)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, ok: torch.Tensor | None = None) -> None:
        ok = torch.ones((), dtype=torch.bool, device=self._n.device) if ok is None else ok
        self._n += ok
        n = self._n.double()
        w = ((1 - ((1 + n) / (10 + n)).clamp(max=self.decay)) * ok).float()  # 1 - d, or 0 for a skipped step
        ema_p, p = list(self.model.parameters()), list(model.parameters())
        torch._foreach_lerp_(ema_p, p, [w] * len(p))  # ema <- d * ema + (1 - d) * p, the weight a tensor on the device
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
    drop = torch.rand(len(y), generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null), y)
