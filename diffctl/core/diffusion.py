"""The forward process and the one preconditioned denoiser D(x, sigma) that training, every metric
and every sampler use.

Everything works in the scaled variable x = x_t / sqrt(alpha_bar_t) = x_0 + sigma eps (EDM's VP
formulation), so one sampler serves every schedule.  A network F is wrapped in EDM's
preconditioning (Karras et al. 2022, eq. 7 and Table 1):

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

with c_in = 1 / sqrt(sigma^2 + sigma_data^2) and c_noise = the (continuous) training timestep of
sigma on the VP schedule.  What the network predicts is a choice of c_skip and c_out:

    eps   c_skip = 1                                  c_out = -sigma                         (DDPM)
    x0    c_skip = 0                                  c_out = 1
    v     c_skip = sigma_data^2 / (sigma^2 + s_d^2)   c_out = -sigma s_d / sqrt(sigma^2 + s_d^2)

With sigma_data = 1, c_in x = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps is DDPM's x_t and v is
Salimans & Ho's v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0; with sigma_data = 0.5, v is EDM's
F (up to its sign).  The training loss is w(sigma) ||D(x, sigma) - x_0||^2, computed as
w c_out^2 ||F - (x_0 - c_skip x) / c_out||^2 so that a small c_out never divides the network's error.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .schedules import sigma_to_t

PREDICTIONS = ("eps", "x0", "v")


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample scalars ``[N]`` to broadcast against ``[N, ...]``."""
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def q_sample(x0: torch.Tensor, alpha_bar_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) (DDPM eq. 4); ``alpha_bar_t`` is ``[N]``, x0 and noise ``[N, ...]``."""
    a = _bcast(alpha_bar_t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def preconditioning(prediction: str, sigma: torch.Tensor, sigma_data: float = 1.0):
    """(c_skip, c_out, c_in) at noise levels ``sigma`` for a network that predicts ``prediction``."""
    sd2 = sigma_data**2
    c_in = 1 / (sigma**2 + sd2).sqrt()
    if prediction == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if prediction == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
    if prediction == "v":
        return sd2 / (sigma**2 + sd2), -sigma * sigma_data * c_in, c_in
    raise ValueError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")


def _per_item(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma).to(x.device, torch.float64)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


class Preconditioned:
    """A network ``net(x_in [N, ...], c_noise [N], *cond)`` seen at noise level sigma of the scaled
    variable x: its inputs are c_in x and the training timestep of sigma on the VP schedule ``alpha_bar``."""

    def __init__(self, net: Callable, alpha_bar: torch.Tensor, prediction: str = "eps", sigma_data: float = 1.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")
        self.net, self.alpha_bar, self.prediction, self.sigma_data = net, alpha_bar.double(), prediction, float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in) ``[N]`` float64."""
        return preconditioning(self.prediction, sigma, self.sigma_data)

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's noise input: the continuous training timestep of sigma (integer at the schedule's levels)."""
        return sigma_to_t(sigma, self.alpha_bar.to(sigma.device))

    def _net(self, x_in: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        t = self.c_noise(sigma).to(x_in.dtype)
        return self.net(x_in, t) if cond is None else self.net(x_in, t, cond)


class Denoiser(Preconditioned):
    """D(x, sigma) -> x0_hat, and the training loss of the same mapping."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``[N, ...]`` at noise level ``sigma`` (scalar or ``[N]``); ``cond``: what else conditions the
        network (class labels ``[N]`` of a class-conditional network, whose null label is unconditional)."""
        sigma = _per_item(sigma, x)
        c_skip, c_out, c_in = (_bcast(c, x) for c in self.coefficients(sigma))
        out = self._net((c_in * x).float(), sigma, cond).to(x.dtype)
        return c_skip * x + c_out * out

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, weight: Callable, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """w(sigma) ||D(x0 + sigma noise, sigma) - x0||^2 averaged over all but the batch, ``[N]``.

        ``weight(sigma, denoiser)`` weighs the x0 error (``losses.weight_*``).  The network sees
        c_in (x0 + sigma noise) and is fitted to its target (x0 - c_skip x) / c_out, both written out so
        that the target keeps full precision where c_out is small.
        """
        sigma = sigma.to(x0.device, torch.float64)
        c_skip, c_out, c_in = self.coefficients(sigma)
        b = lambda c: _bcast(c, x0)
        x_in = b(c_in) * x0 + b(c_in * sigma) * noise
        target = b((1 - c_skip) / c_out) * x0 - b(c_skip * sigma / c_out) * noise
        out = self._net(x_in, sigma, cond)
        w = (weight(sigma, self) * c_out**2).float()
        return w * (out.float() - target.float()).pow(2).flatten(1).mean(1)


class NoisyClassifier(Preconditioned):
    """log p(y | x, sigma) ``[N, K]`` for a classifier ``net(x_in, c_noise) -> logits`` trained on noisy inputs
    (Dhariwal & Nichol 2021), in the same scaled variable and network inputs as ``Denoiser``, so its
    gradient in x is what classifier guidance needs whatever schedule either network used."""

    def __init__(self, net: Callable, alpha_bar: torch.Tensor, sigma_data: float = 1.0):
        super().__init__(net, alpha_bar, "x0", sigma_data)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = _per_item(sigma, x)
        c_in = _bcast(self.coefficients(sigma)[2], x)
        return torch.log_softmax(self._net((c_in * x).float(), sigma, None).double(), dim=1)

    def loss(self, x0: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on x0 + sigma noise (trained on all noise levels), ``[N]``."""
        sigma = sigma.to(x0.device, torch.float64)
        c_in = self.coefficients(sigma)[2]
        x_in = _bcast(c_in, x0) * x0 + _bcast(c_in * sigma, x0) * noise
        return torch.nn.functional.cross_entropy(self._net(x_in, sigma, None).float(), y, reduction="none")
