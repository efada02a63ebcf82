"""2-D toy distributions for the MLP denoiser: swiss roll, two moons, Gaussian mixture.

Points are generated from a fixed seed (``dataset.seed``) and standardised to roughly unit
scale.  The Gaussian mixture (8 components on a circle) has a known density, kept in
``gmm_params`` so evaluation and exact denoisers can use it.
"""

from __future__ import annotations

import math

import torch

from ..core.gmm import GaussianMixture

DISTRIBUTIONS = ("swiss_roll", "moons", "gmm")


def gmm_params(components: int = 8, radius: float = 2.0, std: float = 0.15):
    """Means ``[K, 2]`` on a circle of ``radius``, shared isotropic ``std``, equal weights."""
    angle = torch.arange(components, dtype=torch.float64) * 2 * math.pi / components
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return means, std


def oracle() -> GaussianMixture:
    """The exact denoiser (and density) of the 2-D Gaussian mixture."""
    return GaussianMixture(*gmm_params())


def _points(name: str, n: int, seed: int):
    import numpy as np
    from sklearn.datasets import make_moons, make_swiss_roll

    if name == "swiss_roll":
        pts, _ = make_swiss_roll(n, noise=0.5, random_state=seed)
        pts = pts[:, [0, 2]] / 5.0
        return torch.tensor(pts, dtype=torch.float32), None
    if name == "moons":
        pts, y = make_moons(n, noise=0.05, random_state=seed)
        pts = (pts - np.array([0.5, 0.25])) * 1.5
        return torch.tensor(pts, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    return oracle().sample(n, torch.Generator().manual_seed(seed))


def load(name: str, *, num_train: int = 20000, num_test: int = 5000, seed: int = 0) -> dict:
    """``num_train`` / ``num_test`` points of distribution ``name`` (generator seeds ``seed`` and ``seed + 1``)."""
    train, train_y = _points(name, num_train, seed)
    test, test_y = _points(name, num_test, seed + 1)
    classes = {"moons": 2, "gmm": len(gmm_params()[0])}.get(name, 0)
    return dict(train=train, test=test, train_labels=train_y, test_labels=test_y, levels=None, num_classes=classes,
                oracle=oracle() if name == "gmm" else None)
