"""Sample quality in the features of the dataset's reference classifier (``reference.py``): fd_ref,
kid_ref, prdc_ref, and cond_acc for class-conditional samples.

Every number comes with the real-vs-real floor (held-out test images vs the train split) at the same
sample count, and ``err`` / ``floor_err``: standard errors over the generated / held-out items (grouped
jackknife for the smooth statistics, bootstrap for the k-NN ones).
"""

from __future__ import annotations

import torch

from .distances import bootstrap_std, chunked_frechet, cubic_kernel, mmd2_unbiased, prdc, with_floor, within_mean
from .reference import reference_classifier
from .registry import EvalContext, Skipped, images_with_classes, register

RESAMPLES = 100  # bootstrap resamples behind the k-NN metrics' err / floor_err


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


@register("fd_ref", images_with_classes, version=2, equal_count=True)
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


@register("kid_ref", images_with_classes, version=2, equal_count=True)
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
    return {**with_floor(kid, fake, test, ctx.seed), "n": len(fake), "floor_n": len(test), "reference": info}


@register("prdc_ref", images_with_classes, version=2, equal_count=True, better="higher")
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


@register("cond_acc", images_with_classes, equal_count=True, better="higher")
@torch.no_grad()
def cond_acc(ctx: EvalContext) -> dict:
    """Conditional accuracy: how often the reference classifier assigns a sample its requested class (for prompts,
    the class the prompt is a caption of: prompt-following).

    ``floor`` is the classifier's accuracy on held-out real images (what real digits of the
    right class score; prototypical guided samples can exceed it); ``per_class`` the accuracy for
    each requested class; ``err`` the binomial standard error with Wilson's correction, which
    stays above 0 at 0 or n hits.
    """
    labels = ctx.labels()
    if labels is None:
        raise Skipped("the samples have no requested class: sample a class-conditional model with classes=all (or [3,7]), "
                      "a text-conditioned one with prompts=train|heldout or captions of its classes")
    net, info, _, _, samples = _reference(ctx)
    hit = (net(samples).argmax(1) == labels).double()
    p = hit.mean().item()
    per_class = {int(c): round(hit[labels == c].mean().item(), 4) for c in labels.unique()}
    n = len(hit)
    return {"value": p, "err": (p * (1 - p) / n + 1 / (4 * n * n)) ** 0.5 / (1 + 1 / n), "floor": info["test_accuracy"], "n": n, "per_class": per_class,
            "reference": info}
