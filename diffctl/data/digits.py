"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, pixel values 0..16).

Bundled with scikit-learn, so it works offline.  The split is fixed: every 6th image is test
(300 images), the rest train (1,497).
"""

from __future__ import annotations

import torch

from ..core.gmm import GaussianMixture

LEVELS = 17  # pixel values are integers 0..16


def load(name: str = "digits") -> dict:
    """scikit-learn's 8x8 digits: 1,497 train / 300 test, 10 classes, 17 levels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None]  # [1797, 1, 8, 8], 0..16
    x = x / (LEVELS - 1) * 2 - 1  # -> [-1, 1]
    y = torch.tensor(bunch.target, dtype=torch.long)
    test = torch.arange(len(x)) % 6 == 0
    return dict(train=x[~test], test=x[test], train_labels=y[~test], test_labels=y[test], levels=LEVELS, num_classes=10)


def load_gmm(name: str = "digits_gmm", *, std: float = 0.2, num_train: int = 2000, num_test: int = 300, seed: int = 0) -> dict:
    """``digits_gmm``: an image-shaped Gaussian mixture with a closed-form optimal denoiser.

    One component per class, centred on that class's mean digit (train split), shared isotropic
    std ``std`` in [-1, 1] pixel units; ``num_train`` / ``num_test`` items are drawn from the mixture
    (generator seeds ``seed`` and ``seed + 1``), so the data distribution is known.
    """
    real = load()
    means = torch.stack([real["train"][real["train_labels"] == c].mean(0) for c in range(10)])  # [10, 1, 8, 8]
    oracle = GaussianMixture(means, std)
    train, train_y = oracle.sample(num_train, torch.Generator().manual_seed(seed))
    test, test_y = oracle.sample(num_test, torch.Generator().manual_seed(seed + 1))
    return dict(train=train, test=test, train_labels=train_y, test_labels=test_y, levels=None, num_classes=10, oracle=oracle)
