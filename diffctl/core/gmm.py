"""A Gaussian mixture with everything known in closed form: samples, density, the class posterior and
the exact denoiser.  The 2-D ``gmm``, 1-D ``gmm1d`` and image-shaped ``digits_gmm`` datasets draw from it,
``ckpt=oracle`` samples with its denoiser (a model that needs no training), and tests check samplers against it.

For x0 ~ sum_k w_k N(mu_k, s_k^2 I) and x = x0 + sigma z, the optimal denoiser is closed-form:

    v_k           = s_k^2 + sigma^2
    p(k | x)      = softmax_k( log w_k - ||x - mu_k||^2 / (2 v_k) - (D/2) log v_k )
    E[x0 | x]     = sum_k p(k | x) (s_k^2 x + sigma^2 mu_k) / v_k

(with one shared s the log v_k term cancels and E[x0 | x] = (s^2 x + sigma^2 sum_k p(k | x) mu_k) / v),
so samplers can be tested for correctness (convergence, order) without any network.
"""

from __future__ import annotations

import math

import torch


class GaussianMixture:
    """An isotropic Gaussian mixture; calling it is the exact denoiser D(x, sigma) = E[x0 | x0 + sigma z = x].

    ``means`` is ``[K, ...]`` (one item shape per component); ``std`` one float shared by every component, or
    ``[K]``, a std per component; ``weights`` default to uniform.
    """

    def __init__(self, means: torch.Tensor, std: float | torch.Tensor, weights: torch.Tensor | None = None):
        self.means = means.double()
        k = len(means)
        stds = torch.as_tensor(std, dtype=torch.float64)
        self.shared = stds.ndim == 0  # one std for all: the formulas of the module docstring's last line
        if not self.shared and stds.shape != (k,):
            raise ValueError(f"GaussianMixture: std must be one number or one per component ([{k}]), got shape {list(stds.shape)}")
        self.std = float(stds) if self.shared else stds  # float, or float64 [K]
        self.stds = stds.expand(k).clone()  # float64 [K] either way
        self.log_w = (weights.double() if weights is not None else torch.full((k,), 1.0 / k, dtype=torch.float64)).log()

    def _variances(self, sigma: torch.Tensor) -> torch.Tensor:
        """s_k^2 + sigma^2: ``[N, 1]`` with a shared std, ``[N, K]`` otherwise (sigma ``[N]``)."""
        s2 = self.std**2 if self.shared else self.stds.to(sigma.device) ** 2
        return s2 + sigma[:, None] ** 2

    def _log_responsibilities(self, x: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        mu = self.means.to(x.device).flatten(1)  # [K, D]
        d2 = (x.flatten(1).double()[:, None, :] - mu[None]).pow(2).sum(-1)  # [N, K]; differentiable everywhere (cdist is not at 0)
        logits = self.log_w.to(x.device) - d2 / (2 * var)
        if not self.shared:
            logits = logits - 0.5 * mu.shape[1] * var.log()  # N(x; mu_k, v_k I)'s normaliser differs by component
        return torch.log_softmax(logits, dim=1)

    def log_posterior(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p(component k | x) ``[N, K]`` at noise level sigma: the exact noise-aware classifier."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        return self._log_responsibilities(x, self._variances(sigma))

    @property
    def num_classes(self) -> int:
        return len(self.means)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x], or E[x0 | x, component y] where ``y`` (``[N]``) names a component; the null label
        ``num_classes`` (or ``y=None``) is the whole mixture: the exact class-conditional denoiser."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        var = self._variances(sigma)
        p = self._log_responsibilities(x, var).exp()
        if y is not None:
            y = y.to(x.device)
            given = y < self.num_classes
            p = torch.where(given[:, None], torch.nn.functional.one_hot(y.clamp(max=self.num_classes - 1), self.num_classes).to(p), p)
        mu = self.means.to(x.device).flatten(1)
        shape = (-1, *([1] * (x.ndim - 1)))
        s2 = sigma.view(shape) ** 2
        if self.shared:
            mean_mu = (p @ mu).view_as(x)  # sum_k p(k|x) mu_k
            return (self.std**2 * x.double() + s2 * mean_mu) / var.view(shape)
        keep = (p * self.stds.to(x.device) ** 2 / var).sum(1).view(shape)  # sum_k p(k|x) s_k^2 / v_k
        return keep * x.double() + s2 * ((p / var) @ mu).view_as(x)  # + sigma^2 sum_k p(k|x) mu_k / v_k

    def log_density(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """log p_sigma(x) of the mixture convolved with N(0, sigma^2 I), ``[N]`` (nats)."""
        mu = self.means.to(x.device).flatten(1)
        d = mu.shape[1]
        d2 = torch.cdist(x.flatten(1).double(), mu).pow(2)
        if self.shared:
            var = self.std**2 + sigma**2
            return torch.logsumexp(self.log_w.to(x.device) - d2 / (2 * var), dim=1) - 0.5 * d * math.log(2 * math.pi * var)
        var = self.stds.to(x.device) ** 2 + sigma**2  # [K]
        return torch.logsumexp(self.log_w.to(x.device) - d2 / (2 * var) - 0.5 * d * torch.log(2 * math.pi * var), dim=1)

    def noised(self, alpha_bar: float) -> GaussianMixture:
        """The law of x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (DDPM eq. 4), again a Gaussian mixture:
        means sqrt(alpha_bar) mu_k, stds sqrt(alpha_bar s_k^2 + 1 - alpha_bar), the same weights."""
        a = float(alpha_bar)
        std = (a * self.stds**2 + 1 - a).sqrt()
        return GaussianMixture(self.means * math.sqrt(a), float(std[0]) if self.shared else std, self.log_w.exp())

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws and their component labels."""
        labels = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        std = self.std if self.shared else self.stds[labels].view(-1, *([1] * (self.means.ndim - 1)))
        x = self.means[labels] + std * torch.randn((n, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        return x.float(), labels
