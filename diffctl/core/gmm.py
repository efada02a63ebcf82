"""A Gaussian mixture with everything known in closed form: samples, density, the class posterior and
the exact denoiser.  The 2-D ``gmm`` and image-shaped ``digits_gmm`` datasets draw from it, ``ckpt=oracle``
samples with its denoiser (a model that needs no training), and tests check samplers against it.

For x0 ~ sum_k w_k N(mu_k, s^2 I) and x = x0 + sigma z, the optimal denoiser is closed-form:

    p(k | x)      = softmax_k( log w_k - ||x - mu_k||^2 / (2 (s^2 + sigma^2)) )
    E[x0 | x]     = (s^2 x + sigma^2 sum_k p(k | x) mu_k) / (s^2 + sigma^2)

so samplers can be tested for correctness (convergence, order) without any network.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """An isotropic Gaussian mixture with shared std; calling it is the exact denoiser D(x, sigma) = E[x0 | x0 + sigma z = x].

    ``means`` is ``[K, ...]`` (one item shape per component); ``weights`` default to uniform.
    """

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor | None = None):
        self.means = means.double()
        self.std = float(std)
        k = len(means)
        self.log_w = (weights.double() if weights is not None else torch.full((k,), 1.0 / k, dtype=torch.float64)).log()

    def _log_responsibilities(self, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        mu = self.means.to(x.device).flatten(1)  # [K, D]
        d2 = (x.flatten(1).double()[:, None, :] - mu[None]).pow(2).sum(-1)  # [N, K]; differentiable everywhere (cdist is not at 0)
        return torch.log_softmax(self.log_w.to(x.device) - d2 / (2 * var[:, None]), dim=1)

    def log_posterior(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p(component k | x) ``[N, K]`` at noise level sigma: the exact noise-aware classifier."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        return self._log_responsibilities(x, self.std**2 + sigma**2)

    @property
    def num_classes(self) -> int:
        return len(self.means)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x], or E[x0 | x, component y] where ``y`` (``[N]``) names a component; the null label
        ``num_classes`` (or ``y=None``) is the whole mixture: the exact class-conditional denoiser."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        var = self.std**2 + sigma**2
        p = self._log_responsibilities(x, var).exp()
        if y is not None:
            y = y.to(x.device)
            given = y < self.num_classes
            p = torch.where(given[:, None], torch.nn.functional.one_hot(y.clamp(max=self.num_classes - 1), self.num_classes).to(p), p)
        mean_mu = (p @ self.means.to(x.device).flatten(1)).view_as(x)  # sum_k p(k|x) mu_k
        v = var.view(-1, *([1] * (x.ndim - 1)))
        s2 = sigma.view_as(v) ** 2
        return (self.std**2 * x.double() + s2 * mean_mu) / v

    def log_density(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """log p_sigma(x) of the mixture convolved with N(0, sigma^2 I), ``[N]`` (nats)."""
        var = self.std**2 + sigma**2
        mu = self.means.to(x.device).flatten(1)
        d = mu.shape[1]
        d2 = torch.cdist(x.flatten(1).double(), mu).pow(2)
        return torch.logsumexp(self.log_w.to(x.device) - d2 / (2 * var), dim=1) - 0.5 * d * math.log(2 * math.pi * var)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws and their component labels."""
        labels = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        x = self.means[labels] + self.std * torch.randn((n, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        return x.float(), labels
