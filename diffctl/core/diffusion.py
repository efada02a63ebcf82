"""Forward process q(x_t | x_0), parameterisation conversions, and the denoiser D(x, sigma).

Notation (Ho et al. 2020; Salimans & Ho 2022 for v):
    x_t   = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps            (DDPM eq. 4)
    v_t   = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0            (v-prediction)

Samplers work in the scaled variable  x = x_t / sqrt(alpha_bar_t) = x_0 + sigma eps  (EDM's VP
formulation), so one sampler serves every schedule.  ``Denoiser`` turns a network that predicts
eps, x_0 or v at timestep t into D(x, sigma) -> x_0_hat, the only thing samplers see.
"""

from __future__ import annotations

from typing import Callable

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


def training_target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output for ``prediction`` in ``PREDICTIONS``."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        a = _bcast(alpha_bar_t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")


def output_to_x0_eps(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor):
    """Invert the parameterisation: network output at x_t -> (x0_hat, eps_hat)."""
    a = _bcast(alpha_bar_t, x_t)
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    if prediction == "eps":
        eps = out
        x0 = (x_t - s1a * eps) / sa  # DDPM eq. 4 solved for x_0
    elif prediction == "x0":
        x0 = out
        eps = (x_t - sa * x0) / s1a
    elif prediction == "v":
        x0 = sa * x_t - s1a * out  # since x_t = sa x0 + s1a eps and v = sa eps - s1a x0
        eps = s1a * x_t + sa * out
    else:
        raise ValueError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")
    return x0, eps


def network_inputs(x: torch.Tensor, sigma: torch.Tensor, alpha_bar: torch.Tensor):
    """(x_t, t, alpha_bar_t) a network trained on the VP schedule ``alpha_bar`` sees for the scaled
    variable ``x`` = x_0 + sigma eps: x_t = x / sqrt(1 + sigma^2) and the continuous timestep of sigma."""
    sigma = sigma.to(x.device, torch.float64)
    sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
    alpha_bar_t = 1 / (1 + sigma**2)
    t = sigma_to_t(sigma, alpha_bar.to(sigma.device))
    return x * _bcast(alpha_bar_t.sqrt(), x), t, alpha_bar_t


class Denoiser:
    """D(x, sigma) -> x0_hat for a network ``net(x_t [N, ...], t [N]) -> output`` trained on a VP schedule.

    ``x`` is the scaled variable x_0 + sigma eps; the network sees x_t = x / sqrt(1 + sigma^2)
    (since alpha_bar = 1 / (1 + sigma^2)) and the continuous timestep for sigma.
    """

    def __init__(self, net: Callable, alpha_bar: torch.Tensor, prediction: str = "eps"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {list(PREDICTIONS)}")
        self.net, self.alpha_bar, self.prediction = net, alpha_bar.double(), prediction

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``y``: class labels ``[N]`` for a class-conditional network (its null label: unconditional)."""
        x_t, t, alpha_bar_t = network_inputs(x, sigma, self.alpha_bar)
        out = (self.net(x_t.float(), t.float()) if y is None else self.net(x_t.float(), t.float(), y)).to(x.dtype)
        x0, _ = output_to_x0_eps(self.prediction, out, x_t, alpha_bar_t)
        return x0


class NoisyClassifier:
    """log p(y | x, sigma) ``[N, K]`` for a classifier ``net(x_t, t) -> logits`` trained on noisy inputs
    of a VP schedule (Dhariwal & Nichol 2021), in the same scaled variable x as ``Denoiser``, so
    its gradient in x is what classifier guidance needs whatever schedule either network used."""

    def __init__(self, net: Callable, alpha_bar: torch.Tensor):
        self.net, self.alpha_bar = net, alpha_bar.double()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_t, t, _ = network_inputs(x, sigma, self.alpha_bar)
        return torch.log_softmax(self.net(x_t.float(), t.float()).double(), dim=1)
