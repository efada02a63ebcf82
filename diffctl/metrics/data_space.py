"""Sample quality measured in data space, without a feature extractor: swd, mmd and energy for 2-D
point data (two-sample distances to the test split; floor: the train split's distance at the same
count, with jackknife errors), and logp_true, the samples' log-density under a known true
distribution (gmm, digits_gmm).
"""

from __future__ import annotations

import torch

from .distances import energy_distance, median_bandwidth, mmd2_unbiased, rbf_kernel, sliced_wasserstein, with_floor
from .registry import EvalContext, known_density, points, register


def _two_sample(ctx: EvalContext, fn) -> dict:
    """``fn(a, b)`` for samples vs test split and, as the floor, train vs test at the same count."""
    samples, test, train = ctx.samples(), ctx.data.test, ctx.data.train
    n = min(len(samples), len(test), len(train))
    return {**with_floor(lambda a: fn(a, test[:n]), samples[:n], train[:n], ctx.seed), "n": n}


@register("swd", points, version=2)
def swd(ctx: EvalContext) -> dict:
    """Sliced Wasserstein-2 distance (256 fixed random directions), generated vs test split."""
    return _two_sample(ctx, lambda a, b: sliced_wasserstein(a, b, seed=ctx.seed))


@register("mmd", points, version=2)
def mmd(ctx: EvalContext) -> dict:
    """Unbiased MMD^2, Gaussian kernel with a fixed bandwidth: the median pairwise distance of the test split."""
    h = median_bandwidth(ctx.data.test[:2000])
    return {**_two_sample(ctx, lambda a, b: mmd2_unbiased(a, b, rbf_kernel(h))), "bandwidth": h}


@register("energy", points, version=2)
def energy(ctx: EvalContext) -> dict:
    """Energy distance (Szekely & Rizzo 2013), generated vs test split; floor: train vs test."""
    return _two_sample(ctx, energy_distance)


@register("logp_true", known_density, better="higher")
@torch.no_grad()
def logp_true(ctx: EvalContext) -> dict:
    """Mean log-density of the samples under the true data distribution (nats per item).

    Higher is better; ``floor`` is the same quantity for the held-out test split (what perfect
    samples score, up to sampling noise).  Samples piling on the modes can exceed it: read it
    with a distance such as swd or fd_ref.
    """
    samples = ctx.samples()
    n = min(len(samples), len(ctx.data.test))
    lp, lp_test = ctx.data.oracle.log_density(samples), ctx.data.oracle.log_density(ctx.data.test[:n])
    stderr = lambda v: (v.std() / len(v) ** 0.5).item()  # the mean's standard error (what the bootstrap estimates)
    return {"value": lp.mean().item(), "err": stderr(lp), "floor": lp_test.mean().item(), "floor_err": stderr(lp_test), "n": len(samples)}
