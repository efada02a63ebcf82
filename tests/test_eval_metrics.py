"""Registered evaluation metrics on the exact Gaussian-mixture oracle, where the truth is known."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffctl.config import load_option
from diffctl.core.schedules import make_alpha_bar
from diffctl.data import load_dataset
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


def test_ode_nll_with_hutchinson_on_image_shaped_data(tmp_path):
    # 64 dimensions: Hutchinson's estimator, unbiased per item, so the mean over 300 items is close
    ctx = _oracle_ctx("digits_gmm", 200, tmp_path)
    r = METRICS["ode_nll"].fn(ctx, steps=32)
    assert r["trace"].startswith("hutchinson")
    assert r["value"] == pytest.approx(r["floor"], abs=max(4 * r["stderr"], 0.5))


def test_ode_nll_reports_bits_per_dim_for_quantised_data(tmp_path):
    ctx = _oracle_ctx("digits_gmm", 100, tmp_path)
    ctx.data = replace(ctx.data, levels=17)
    r = METRICS["ode_nll"].fn(ctx, steps=8)
    assert r["unit"] == "bits/dim" and "floor" not in r
    assert torch.isfinite(torch.tensor(r["value"]))


def test_values_print_with_their_error_bars():
    from diffctl.evaluate import _pm

    assert _pm(10.56, 2.08) == "10.6 ± 2.1" and _pm(0.8312, 0.0213) == "0.831 ± 0.021" and _pm(3.2217) == "3.222"
    assert _pm(1234.5, 87.0) == "1234 ± 87" and _pm(None) == ""
