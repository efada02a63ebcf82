"""Registered evaluation metrics on the exact Gaussian-mixture oracle, where the truth is known."""

from dataclasses import replace
from pathlib import Path

import math

import pytest
import torch

from diffctl.config import load_option
from diffctl.core.likelihood import ode_log_likelihood
from diffctl.core.schedules import make_alpha_bar, sigmas_from_alpha_bar
from diffctl.data import load_dataset, quantize
from diffctl.metrics import METRICS, EvalContext


def _oracle_ctx(name: str, n_test: int, tmp_path: Path) -> EvalContext:
    data = load_dataset(load_option("dataset", name))
    data = replace(data, test=data.test[:n_test])
    return EvalContext(None, make_alpha_bar("linear", 1000), "x0", data, lambda: data.test, tmp_path, denoise=data.oracle)


def test_ode_nll_of_the_exact_denoiser_equals_the_true_nll_on_2d_data(tmp_path):
    # exact divergence (2-D): only the ODE solver's error separates the two
    r = METRICS["ode_nll"].fn(_oracle_ctx("gmm", 100, tmp_path))
    assert r["trace"] == "exact" and r["unit"] == "nats per item"
    assert r["value"] == pytest.approx(r["floor"], abs=0.01)


def test_ode_likelihood_with_hutchinson_on_image_shaped_data():
    # 64 dimensions: Hutchinson's estimator is unbiased per item, so the mean difference to the true
    # log-density is the solver's bias (0.09 nats at 64 steps, measured with the exact trace) plus noise
    data = load_dataset(load_option("dataset", "digits_gmm"))
    x = data.test[:200].double()
    sig = sigmas_from_alpha_bar(make_alpha_bar("linear", 1000))
    lp = ode_log_likelihood(data.oracle, x, sig[0].item(), sig[-1].item(), 64, probes=1, generator=torch.Generator().manual_seed(0))
    diff = lp - data.oracle.log_density(x, sigma=sig[0].item())
    assert abs(diff.mean().item()) < 4 * diff.std().item() / len(diff) ** 0.5 + 0.1


def test_ode_nll_in_bits_per_dim_of_quantised_data_is_the_dequantised_bound(tmp_path):
    ctx = _oracle_ctx("digits_gmm", 100, tmp_path)
    levels, width = 17, 2 / 16
    ctx.data = replace(ctx.data, test=quantize(ctx.data.test, levels), levels=levels)
    r = METRICS["ode_nll"].fn(ctx)
    assert r["unit"] == "bits/dim" and "floor" not in r and r["uniform_bpd"] == pytest.approx(math.log2(17))
    # the same dequantisation draw as the metric's (its generator's first use), scored by the true density
    g = torch.Generator().manual_seed(ctx.seed)
    x = ctx.data.test.double() + (torch.rand(ctx.data.test.shape, generator=g, dtype=torch.float64) - 0.5) * width
    nll = -ctx.data.oracle.log_density(x, sigma=r["sigma_min"])
    expected = (nll.mean().item() / (64 * math.log(2)) - math.log2(width))
    assert r["value"] == pytest.approx(expected, abs=0.02)


def test_values_print_with_their_error_bars():
    from diffctl.evaluate import _pm

    assert _pm(10.56, 2.08) == "10.6 ± 2.1" and _pm(0.8312, 0.0213) == "0.831 ± 0.021" and _pm(3.2217) == "3.222"
    assert _pm(1234.5, 87.0) == "1234 ± 87" and _pm(None) == ""
    # a diverged model's numbers print as they are instead of crashing the table
    assert _pm(float("nan"), float("nan")) == "nan" and _pm(2.0, float("inf")) == "2" and _pm(1.0, -0.5) == "1"
