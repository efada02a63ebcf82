"""A residual MLP denoiser for 2-D point data."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .unet import ClassEmbedding, timestep_embedding


class MLP(nn.Module):
    """(x [N, D], t [N], labels [N] or None) -> [N, D] (or [N, K] logits with ``classify`` = K): input and time (+ label) embedding projected, then residual SiLU blocks."""

    def __init__(self, data_shape: Sequence[int], classify: int = 0, *, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        if len(data_shape) != 1:
            raise ValueError(f"model arch 'mlp' needs vector data [D]; this dataset is {list(data_shape)}: use a unet model")
        (dim,) = data_shape
        self.time_dim = time_dim
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = ClassEmbedding(num_classes, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, classify or dim))  # classify = K: K logits

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x) + self.label(self.time(timestep_embedding(t, self.time_dim)), y)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
