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


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double()).pow(2)


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 with the Gaussian kernel exp(-||x - y||^2 / (2 h^2)) (Gretton et al. 2012, eq. 3)."""
    k = lambda x, y: torch.exp(-_sq_dists(x, y) / (2 * bandwidth**2))
    m, n = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return float((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1)) - 2 * k(a, b).mean())


def median_bandwidth(x: torch.Tensor) -> float:
    """The median pairwise distance of a reference set: a fixed, data-derived kernel bandwidth."""
    d = torch.cdist(x.double(), x.double())
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo 2013), with unbiased within-set means."""
    m, n = len(a), len(b)
    dab = torch.cdist(a.double(), b.double()).mean()
    daa = torch.cdist(a.double(), a.double()).sum() / (m * (m - 1))
    dbb = torch.cdist(b.double(), b.double()).sum() / (n * (n - 1))
    return float(2 * dab - daa - dbb)


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point of x to its k-th nearest other point of x."""
    d = torch.cdist(x.double(), x.double())
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls."""
    rr, rf = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake.double(), real.double())  # [fake, real]
    precision = (d <= rr[None, :]).any(1).double().mean()  # fake inside some real ball
    recall = (d.T <= rf[None, :]).any(1).double().mean()  # real inside some fake ball
    return float(precision), float(recall)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3-4)."""
    rr = _kth_radius(real, k)
    inside = torch.cdist(fake.double(), real.double()) <= rr[None, :]  # [fake, real]
    density = inside.double().sum() / (k * len(fake))
    coverage = inside.any(0).double().mean()
    return float(density), float(coverage)
