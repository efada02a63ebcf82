"""The metric registry: name -> (when it applies, how to compute it).

A metric is a function ``fn(ctx) -> dict`` of an ``EvalContext``; ``applies(data)`` returns
None when it can run on a dataset, or the reason it cannot (reported as ``skipped``).  Every
result dict carries its sample count and metric version; sample-quality numbers carry the
real-vs-real floor measured at the same sample count, and ``err`` / ``floor_err``: standard
errors over the generated / held-out items (grouped jackknife for smooth statistics, bootstrap
for the k-NN ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..core.diffusion import output_to_x0_eps, q_sample, training_target
from .distances import (bootstrap_std, chunked_frechet, cubic_kernel, energy_distance, jackknife_std, median_bandwidth, mmd2_unbiased, prdc,
                        rbf_kernel, sliced_wasserstein, within_mean)
from .reference import reference_classifier


@dataclass
class EvalContext:
    net: Optional[torch.nn.Module]  # None for the oracle
    alpha_bar: torch.Tensor  # float64 [T]
    prediction: str
    data: object  # diffctl.data.Dataset
    samples: Callable[[], torch.Tensor]  # generated samples [N, ...] (made once, on first call)
    cache_dir: Path
    seed: int = 0
    device: torch.device = torch.device("cpu")
    memo: dict = field(default_factory=dict)  # work shared by metrics and grid cells (pass the same dict)
    options: dict = field(default_factory=dict)  # metric settings from the config, e.g. inception_weights
    denoise: Optional[Callable] = None  # D(x, sigma) of the network or the oracle
    labels: Callable[[], Optional[torch.Tensor]] = lambda: None  # the requested class of each sample (conditional sampling)


class Skipped(Exception):
    """Raised by a metric that cannot run in this setting; its message is the reason reported."""


@dataclass
class Metric:
    fn: Callable[[EvalContext], dict]
    applies: Callable[[object], Optional[str]]  # data -> None, or why it does not apply
    version: int = 1
    uses_samples: bool = True  # False: computed once per checkpoint, not per sampler setting
    needs_net: bool = False


METRICS: dict[str, Metric] = {}
RESAMPLES = 100  # bootstrap resamples behind the k-NN metrics' err / floor_err


def register(name: str, applies: Callable[[object], Optional[str]], version: int = 1, uses_samples: bool = True, needs_net: bool = False):
    def deco(fn):
        METRICS[name] = Metric(fn, applies, version, uses_samples, needs_net)
        return fn

    return deco


def skip_reason(metric: Metric, data, has_net: bool) -> Optional[str]:
    if metric.needs_net and not has_net:
        return "needs a trained network (the oracle has none)"
    return metric.applies(data)


def _always(data) -> None:
    return None


def _images_with_classes(data) -> Optional[str]:
    if not data.is_image:
        return "needs image data"
    if not data.num_classes:
        return "needs class labels to train the reference classifier"
    return None


def _points(data) -> Optional[str]:
    return None if not data.is_image else "needs 2-D point data"


@register("test_loss", _always, version=2, uses_samples=False, needs_net=True)
@torch.no_grad()
def test_loss(ctx: EvalContext, per_item: int = 10) -> dict:
    """Denoising error on the test split at ``per_item`` stratified timesteps per item (fixed seed).

    ``value`` is the eps-space MSE (DDPM's L_simple) whatever the model predicts, so runs with
    different targets compare; ``target_mse`` is the error in the model's own target.
    """
    g = torch.Generator().manual_seed(ctx.seed)
    x, T = ctx.data.test, len(ctx.alpha_bar)
    alpha_bar = ctx.alpha_bar.to(ctx.device)
    eps_sum = target_sum = 0.0
    for k in range(per_item):
        t = ((k + torch.rand(len(x), generator=g)) / per_item * T).long().clamp(max=T - 1)  # stratified in [0, T)
        noise = torch.randn(x.shape, generator=g)
        for i in range(0, len(x), 500):
            x0, n_, tt = x[i:i + 500].to(ctx.device), noise[i:i + 500].to(ctx.device), t[i:i + 500].to(ctx.device)
            a = alpha_bar[tt].float()
            x_t = q_sample(x0, a, n_)
            out = ctx.net(x_t, tt.float())
            _, eps_hat = output_to_x0_eps(ctx.prediction, out.double(), x_t.double(), a.double())
            eps_sum += (eps_hat - n_.double()).pow(2).flatten(1).mean(1).sum().item()
            target_sum += (out - training_target(ctx.prediction, x0, n_, a)).pow(2).flatten(1).mean(1).sum().item()
    count = per_item * len(x)
    return {"value": eps_sum / count, "target_mse": target_sum / count, "target": ctx.prediction, "n": count}


@torch.no_grad()
def _reference(ctx: EvalContext):
    """(classifier, its info, train features, test features, samples): the classifier and the real
    features are computed once per evaluation (``ctx.memo``), whatever the metrics and grid cells."""
    if "reference" not in ctx.memo:
        net, info = reference_classifier(ctx.data, ctx.cache_dir)
        ctx.memo["reference"] = (net, info, net.features(ctx.data.train), net.features(ctx.data.test))
    samples = ctx.samples()
    n = len(ctx.data.test)
    if len(samples) < n:
        raise ValueError(f"reference-feature metrics need num_samples >= {n} (the test-split size, for an equal-count floor); got {len(samples)}")
    return (*ctx.memo["reference"], samples)


@register("fd_ref", _images_with_classes, version=2)
@torch.no_grad()
def fd_ref(ctx: EvalContext) -> dict:
    """Frechet distance in reference-classifier features, generated vs train split.

    Generated samples are scored in chunks of the test-split size and averaged, so the value and
    its floor (held-out test images vs train) are measured at the same sample count.
    """
    net, info, train, test, samples = _reference(ctx)
    result = chunked_frechet(net.features(samples), test, train, ctx.seed)
    probs = net(samples).softmax(1)
    hist = torch.bincount(probs.argmax(1), minlength=ctx.data.num_classes).float() / len(probs)
    return {
        **result,
        "class_histogram": [round(h, 4) for h in hist.tolist()],
        "classes_present": int((hist >= 0.02).sum()),
        "mean_confidence": probs.max(1).values.mean().item(),
        "reference": info,
    }


@register("cond_acc", _images_with_classes)
@torch.no_grad()
def cond_acc(ctx: EvalContext) -> dict:
    """Conditional accuracy: how often the reference classifier assigns a sample its requested class.

    ``floor`` is the classifier's accuracy on held-out real images (what real digits of the
    right class score; prototypical guided samples can exceed it); ``per_class`` the accuracy for
    each requested class; ``err`` the binomial standard error with Wilson's correction, which
    stays above 0 at 0 or n hits.
    """
    labels = ctx.labels()
    if labels is None:
        raise Skipped("the samples are unconditional: sample a class-conditional model with classes=all (or [3,7])")
    net, info, _, _, samples = _reference(ctx)
    hit = (net(samples).argmax(1) == labels).double()
    p = hit.mean().item()
    per_class = {int(c): round(hit[labels == c].mean().item(), 4) for c in labels.unique()}
    n = len(hit)
    return {"value": p, "err": (p * (1 - p) / n + 1 / (4 * n * n)) ** 0.5 / (1 + 1 / n), "floor": info["test_accuracy"], "n": n, "per_class": per_class,
            "reference": info}


@register("kid_ref", _images_with_classes, version=2)
@torch.no_grad()
def kid_ref(ctx: EvalContext) -> dict:
    """KID in reference-classifier features: the unbiased MMD^2 with KID's cubic polynomial kernel
    between all generated samples and the train split (no subsets: the features are small).

    Features are divided by the train features' RMS first, so that x.y / D is O(1) as for
    Inception features (raw, the cubic kernel is dominated by feature norms and KID by noise);
    floor: held-out test images vs train.  KID is unbiased, so its floor is 0 in expectation at
    any count; ``err`` / ``floor_err`` are jackknife errors.
    """
    net, info, train, test, samples = _reference(ctx)
    scale = train.pow(2).mean().sqrt()
    fake, train, test = net.features(samples) / scale, train / scale, test / scale
    train_within = within_mean(cubic_kernel, train)
    kid = lambda x: mmd2_unbiased(x, train, cubic_kernel, train_within)
    return {**_with_floor(kid, fake, test, ctx.seed), "n": len(fake), "floor_n": len(test), "reference": info}


def _with_floor(stat: Callable[[torch.Tensor], float], gen: torch.Tensor, real: torch.Tensor, seed: int) -> dict:
    """``stat`` of the generated set (value) and of held-out real data (floor), each with its
    jackknife error over that set's items."""
    return {"value": stat(gen), "err": jackknife_std(lambda ids: stat(gen[ids]), len(gen), seed=seed),
            "floor": stat(real), "floor_err": jackknife_std(lambda ids: stat(real[ids]), len(real), seed=seed + 1)}


def _two_sample(ctx: EvalContext, fn) -> dict:
    """``fn(a, b)`` for samples vs test split and, as the floor, train vs test at the same count."""
    samples, test, train = ctx.samples(), ctx.data.test, ctx.data.train
    n = min(len(samples), len(test), len(train))
    return {**_with_floor(lambda a: fn(a, test[:n]), samples[:n], train[:n], ctx.seed), "n": n}


@register("swd", _points, version=2)
def swd(ctx: EvalContext) -> dict:
    """Sliced Wasserstein-2 distance (256 fixed random directions), generated vs test split."""
    return _two_sample(ctx, lambda a, b: sliced_wasserstein(a, b, seed=ctx.seed))


def _known_density(data) -> Optional[str]:
    return None if data.oracle is not None and hasattr(data.oracle, "log_density") else "needs a dataset with a known density (gmm, digits_gmm)"


@register("logp_true", _known_density)
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


def _quantised_images(data) -> Optional[str]:
    return None if data.levels is not None else "needs quantised data (a number of pixel levels) for the discretised decoder"


@register("vlb", _quantised_images, uses_samples=False, needs_net=True)
@torch.no_grad()
def vlb(ctx: EvalContext) -> dict:
    """The variational bound on the test split in bits/dim, over all T terms (DDPM eq. 5).

    Fixed reverse variance beta_tilde, x0_hat clamped to [-1, 1], a discretised Gaussian decoder
    over the dataset's levels (17 for digits, 256 for 8-bit images); one q(x_t | x0) draw per
    image and term (fixed seed).
    """
    from ..core.likelihood import nats_to_bits_per_dim, prior_bits, vlb_term
    from ..progress import progress_bar

    g = torch.Generator().manual_seed(ctx.seed)
    x0 = ctx.data.test.double().to(ctx.device)
    ab = ctx.alpha_bar.double().to(ctx.device)
    dims = x0[0].numel()
    prior = prior_bits(x0, ab)
    total, decoder = prior.clone(), None
    with progress_bar("vlb over T terms", len(ab)) as advance:
        for t in range(len(ab)):
            noise = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(ctx.device)
            x_t = q_sample(x0, ab[t].expand(len(x0)), noise)
            out = ctx.net(x_t.float(), torch.full((len(x0),), float(t), device=ctx.device)).double()
            x0_hat, _ = output_to_x0_eps(ctx.prediction, out, x_t, ab[t].expand(len(x0)))
            term = vlb_term(x0, x_t, x0_hat.clamp(-1, 1), ab, t, ctx.data.levels)
            decoder = term if t == 0 else decoder
            total += term
            advance()
    bpd = nats_to_bits_per_dim(total, dims)
    return {"value": bpd.mean().item(), "stderr": (bpd.std() / len(bpd) ** 0.5).item(), "n": len(bpd), "levels": ctx.data.levels,
            "prior_bpd": nats_to_bits_per_dim(prior, dims).mean().item(), "decoder_bpd": nats_to_bits_per_dim(decoder, dims).mean().item(),
            "uniform_bpd": math.log2(ctx.data.levels)}


@register("ode_nll", _always, uses_samples=False)
def ode_nll(ctx: EvalContext, steps: int = 64, exact_up_to: int = 16) -> dict:
    """Negative log-likelihood of the test split under the probability-flow ODE.

    Integrated from the schedule's smallest to its largest sigma (Heun, ``steps`` steps in log
    sigma); exact divergence for data of at most ``exact_up_to`` dimensions, else Hutchinson's
    estimator with one Rademacher probe per item.  Quantised images are uniformly dequantised
    and reported in bits/dim (an upper bound on the discrete NLL); continuous data in nats per
    item, with the true distribution's NLL of the same points as the floor where it is known.
    """
    from ..core.likelihood import dequantized_bits_per_dim, ode_log_likelihood
    from ..core.schedules import sigmas_from_alpha_bar

    g = torch.Generator().manual_seed(ctx.seed)
    x = ctx.data.test.double()
    dims = x[0].numel()
    levels = ctx.data.levels
    if levels is not None:
        x = x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * (2 / (levels - 1))
    sig = sigmas_from_alpha_bar(ctx.alpha_bar.double())
    probes = None if dims <= exact_up_to else 1
    nll = torch.cat([-ode_log_likelihood(ctx.denoise, x[i:i + 500].to(ctx.device), sig[0].item(), sig[-1].item(), steps, probes, g).cpu()
                     for i in range(0, len(x), 500)])
    out = {"n": len(nll), "steps": steps, "nfe": 2 * steps, "trace": "exact" if probes is None else "hutchinson (1 Rademacher probe)",
           "sigma_min": sig[0].item(), "sigma_max": sig[-1].item()}
    if levels is not None:
        bpd = dequantized_bits_per_dim(nll, dims, levels)
        return {"value": bpd.mean().item(), "stderr": (bpd.std() / len(bpd) ** 0.5).item(), "unit": "bits/dim", "levels": levels,
                "uniform_bpd": math.log2(levels), **out}
    result = {"value": nll.mean().item(), "stderr": (nll.std() / len(nll) ** 0.5).item(), "unit": "nats per item", **out}
    if ctx.data.oracle is not None and hasattr(ctx.data.oracle, "log_density"):
        result["floor"] = -ctx.data.oracle.log_density(ctx.data.test.double(), sigma=sig[0].item()).mean().item()
    return result


@register("prdc_ref", _images_with_classes, version=2)
def prdc_ref(ctx: EvalContext) -> dict:
    """Precision / recall (k = 3) and density / coverage (k = 5) in reference features, vs the train split.

    ``value`` is precision; the floor entries are the same four numbers for held-out test images,
    at the same count; ``errors`` / ``floor_errors`` are bootstrap errors of all four.
    """
    net, info, train, test, samples = _reference(ctx)
    fake = net.features(samples[: len(test)])
    keys, n = ("precision", "recall", "density", "coverage"), len(test)
    ours, real = prdc(train, fake), prdc(train, test)
    values, floors = ours(), real()
    err, floor_err = bootstrap_std(ours, n, RESAMPLES, ctx.seed), bootstrap_std(real, n, RESAMPLES, ctx.seed + 1)
    return {"value": values[0], "err": err[0], "floor": floors[0], "floor_err": floor_err[0], **dict(zip(keys, values)),
            "errors": dict(zip(keys, err)), "floor_all": dict(zip(keys, floors)), "floor_errors": dict(zip(keys, floor_err)),
            "n": n, "reference": info}


@register("mmd", _points, version=2)
def mmd(ctx: EvalContext) -> dict:
    """Unbiased MMD^2, Gaussian kernel with a fixed bandwidth: the median pairwise distance of the test split."""
    h = median_bandwidth(ctx.data.test[:2000])
    return {**_two_sample(ctx, lambda a, b: mmd2_unbiased(a, b, rbf_kernel(h))), "bandwidth": h}


@register("energy", _points, version=2)
def energy(ctx: EvalContext) -> dict:
    """Energy distance (Szekely & Rizzo 2013), generated vs test split; floor: train vs test."""
    return _two_sample(ctx, energy_distance)


from . import inception  # noqa: E402,F401  registers fid, kid, is
