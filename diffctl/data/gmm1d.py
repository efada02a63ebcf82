"""``gmm1d``: a 1-D Gaussian mixture, where the tutorial starts (train with model=mlp).

Three components of unequal weights and widths on a scale of about unit variance (mean -0.05,
variance 1.08 with the defaults), so the density of the data, and of x_t at every noise level, is
known in closed form; the exact denoiser serves ``ckpt=oracle``.  Items are ``[1]``; labels name the
component an item was drawn from (so ``classes=`` and ``guidance.classifier=oracle`` work too).
"""

from __future__ import annotations

import math
from typing import List

import torch

from ..core.gmm import GaussianMixture

MEANS = (-1.0, 0.5, 1.5)
STDS = (0.3, 0.15, 0.1)
WEIGHTS = (0.5, 0.3, 0.2)


def mixture(means=MEANS, stds=STDS, weights=WEIGHTS) -> GaussianMixture:
    """The mixture sum_k w_k N(mu_k, s_k^2) on the line; ``weights`` are normalised to sum to 1.
    Raises ValueError (one line, naming the ``dataset.`` option) for lists it cannot be made of."""
    means, stds, weights = (list(map(float, v)) for v in (means, stds, weights))
    if not means or len(stds) != len(means) or len(weights) != len(means):
        raise ValueError(f"dataset=gmm1d: dataset.means, dataset.stds and dataset.weights need one number per component, "
                         f"at least one; got {len(means)}, {len(stds)} and {len(weights)}")
    for key, values, positive in (("means", means, False), ("stds", stds, True), ("weights", weights, True)):
        bad = next((v for v in values if not math.isfinite(v) or (positive and v <= 0)), None)
        if bad is not None:
            raise ValueError(f"dataset.{key}={values}: {bad} is not {'a positive' if positive else 'a finite'} number")
    w = torch.tensor(weights, dtype=torch.float64)
    return GaussianMixture(torch.tensor(means, dtype=torch.float64)[:, None], torch.tensor(stds, dtype=torch.float64), w / w.sum())


def load(name: str = "gmm1d", *, means: List[float] = MEANS, stds: List[float] = STDS, weights: List[float] = WEIGHTS,
         num_train: int = 20000, num_test: int = 5000, seed: int = 0) -> dict:
    """``num_train`` / ``num_test`` draws ``[N, 1]`` of the mixture (generator seeds ``seed`` and ``seed + 1``),
    with their component labels and the mixture itself as the oracle."""
    oracle = mixture(means, stds, weights)
    train, train_y = oracle.sample(num_train, torch.Generator().manual_seed(seed))
    test, test_y = oracle.sample(num_test, torch.Generator().manual_seed(seed + 1))
    return dict(train=train, test=test, train_labels=train_y, test_labels=test_y, levels=None, num_classes=oracle.num_classes,
                oracle=oracle)
