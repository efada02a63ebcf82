"""The metric registry: name -> (when it applies, how to compute it), and what a metric is given.

A metric is a function ``fn(ctx) -> dict`` of an ``EvalContext``, registered with ``register(name,
applies, ...)``; ``applies(data)`` returns None when it can run on a dataset, or the reason it
cannot (reported as ``skipped``).  A metric that finds out only while running that it cannot run
raises ``Skipped`` with the reason.  The metric modules import this module, never the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..core.registry import Registry


@dataclass
class EvalContext:
    alpha_bar: torch.Tensor  # float64 [T]: the model's (or the oracle's) schedule
    data: object  # diffctl.data.Dataset
    samples: Callable[[], torch.Tensor]  # generated samples [N, ...] (made once, on first call)
    cache_dir: Path
    seed: int = 0
    device: torch.device = torch.device("cpu")
    memo: dict = field(default_factory=dict)  # work shared by metrics and grid cells (pass the same dict)
    options: dict = field(default_factory=dict)  # metric settings from the config, e.g. inception_weights
    denoise: Optional[Callable] = None  # D(x, sigma) -> x0_hat: a core.diffusion.Denoiser of the network, or the oracle
    labels: Callable[[], Optional[torch.Tensor]] = lambda: None  # the requested class of each sample (conditional sampling)
    conditioning: Callable[[], Optional[object]] = lambda: None  # the samples' generation.Conditioning (super-resolution's inputs)


class Skipped(Exception):
    """Raised by a metric that cannot run in this setting; its message is the reason reported."""


@dataclass
class Metric:
    fn: Callable[[EvalContext], dict]
    applies: Callable[[object], Optional[str]]  # data -> None, or why it does not apply
    version: int = 1
    uses_samples: bool = True  # False: computed once per checkpoint, not per sampler setting
    needs_net: bool = False  # True: needs a trained network's Denoiser (the oracle has none)
    equal_count: bool = False  # True: scored against a real-vs-real floor at the test split's size, so needs num_samples >= it
    better: str = "lower"  # which way the value improves: lower (distances, losses, likelihood bounds) | higher


METRICS = Registry("metric", make=Metric)


def register(name: str, applies: Callable[[object], Optional[str]], version: int = 1, uses_samples: bool = True, needs_net: bool = False,
             equal_count: bool = False, better: str = "lower"):
    """Decorator: register ``fn(ctx) -> dict`` as metric ``name`` (``applies``: data -> None or why not)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"metric {name}: better={better!r} is not lower or higher")
    return METRICS.register(name, applies=applies, version=version, uses_samples=uses_samples, needs_net=needs_net, equal_count=equal_count,
                            better=better)


def skip_reason(metric: Metric, data, trained: bool) -> Optional[str]:
    """Why ``metric`` cannot run on ``data`` (``trained``: a trained network, not the oracle), or None."""
    if metric.needs_net and not trained:
        return "needs a trained network (the oracle has none)"
    return metric.applies(data)


# --- applies(data) predicates shared by the metric modules -------------------------------------


def always(data) -> None:
    return None


def points(data) -> Optional[str]:
    return None if not data.is_image else "needs 2-D point data"


def images_with_classes(data) -> Optional[str]:
    if not data.is_image:
        return "needs image data"
    if not data.num_classes:
        return "needs class labels to train the reference classifier"
    return None


def quantised(data) -> Optional[str]:
    return None if data.levels is not None else "needs quantised data (a number of pixel levels) for the discretised decoder"


def known_density(data) -> Optional[str]:
    return None if data.oracle is not None and hasattr(data.oracle, "log_density") else "needs a dataset with a known density (gmm, digits_gmm)"
