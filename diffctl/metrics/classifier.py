"""How well a noise-aware classifier (``task=classifier``) knows the class of noisy test images: the
picture training draws of it, since such a classifier has no samples to score."""

from __future__ import annotations

from typing import Callable

import torch

from ..core.schedules import sigmas_from_alpha_bar


@torch.no_grad()
def accuracy_by_timestep(classify: Callable, alpha_bar: torch.Tensor, x0: torch.Tensor, y: torch.Tensor, seed: int = 0,
                         points: int = 11, batch: int = 500) -> dict[int, float]:
    """Test accuracy of ``classify(x, sigma) -> log p(y | x, sigma)`` at ``points`` evenly spaced timesteps,
    ``{t: accuracy}``; every level noises the test images with the same draw (generator ``seed``)."""
    ts = torch.linspace(0, len(alpha_bar) - 1, points).round().long()
    sigmas = sigmas_from_alpha_bar(alpha_bar.double())[ts]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    out = {}
    for t, s in zip(ts.tolist(), sigmas.tolist()):
        sigma = torch.tensor(s, device=x0.device)
        hits = sum((classify(x0[i:i + batch] + s * z[i:i + batch], sigma).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x0), batch))
        out[t] = round(hits / len(x0), 4)
    return out
