"""Distances between sample sets: Frechet distance of Gaussians, sliced Wasserstein."""

from __future__ import annotations

import numpy as np
import torch


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased) of ``[N, D]`` features, in float64."""
    f = features.double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})  (Dowson & Landau 1982; FID's formula).

    tr((S1 S2)^{1/2}) is the sum of square roots of the eigenvalues of S1 S2, which are real and
    non-negative for covariance matrices (tiny negative round-off is clipped).
    """
    eig = np.linalg.eigvals(sigma1 @ sigma2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size point sets ``[N, D]`` (random directions)."""
    n = min(len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa = (a[:n].double() @ dirs).sort(0).values
    pb = (b[:n].double() @ dirs).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())
