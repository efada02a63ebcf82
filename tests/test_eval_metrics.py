"""Registered evaluation metrics on the exact Gaussian-mixture oracle, where the truth is known."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffctl.config import load_option
from diffctl.core.diffusion import Denoiser
from diffctl.core.likelihood import ode_log_likelihood
from diffctl.core.schedules import make_alpha_bar, sigmas_from_alpha_bar
from diffctl.data import Dataset, load_dataset, quantize
from diffctl.metrics import METRICS, EvalContext, skip_reason


def _oracle_ctx(name: str, n_test: int, tmp_path: Path) -> EvalContext:
    data = load_dataset(load_option("dataset", name))
    data = replace(data, test=data.test[:n_test])
    return EvalContext(make_alpha_bar("linear", 1000), data, lambda: data.test, tmp_path, denoise=data.oracle)


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


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_test_loss_is_the_eps_mse_and_the_error_in_the_models_own_target(tmp_path, prediction):
    """Recomputed in DDPM's variables at the metric's own draws (stratified t, then the noise): the network
    sees x_t = sqrt(a) x0 + sqrt(1 - a) eps at exactly the integer timestep t; ``value`` is the MSE of the
    eps its output implies, ``target_mse`` the MSE of its output against the paper's target
    (eps, x0, or v = sqrt(a) eps - sqrt(1 - a) x0), whatever the denoiser's preconditioning."""
    ab = make_alpha_bar("linear", 1000)
    x0 = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    seen = []

    def net(x, t):  # a fixed, imperfect "network" of (x_t, t)
        seen.append(t)
        return 0.7 * torch.tanh(x) + 1e-3 * t.view(-1, 1)

    ctx = EvalContext(ab, Dataset("points", train=x0, test=x0), None, tmp_path, seed=3, denoise=Denoiser(net, ab, prediction))
    got = METRICS["test_loss"].fn(ctx, per_item=3)

    g = torch.Generator().manual_seed(3)
    eps_err = target_err = 0.0
    for k in range(3):
        t = ((k + torch.rand(40, generator=g)) / 3 * 1000).long().clamp(max=999)
        eps = torch.randn(x0.shape, generator=g).double()
        assert torch.equal(seen[k], t.float())
        a = ab[t].view(-1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        out = (0.7 * torch.tanh(x_t.float()) + 1e-3 * t.float().view(-1, 1)).double()
        eps_hat, target = {"eps": (out, eps), "x0": ((x_t - a.sqrt() * out) / (1 - a).sqrt(), x0),
                           "v": ((1 - a).sqrt() * x_t + a.sqrt() * out, a.sqrt() * eps - (1 - a).sqrt() * x0)}[prediction]
        eps_err += (eps_hat - eps).pow(2).mean(1).sum().item()
        target_err += (out - target).pow(2).mean(1).sum().item()
    assert got["value"] == pytest.approx(eps_err / 120, rel=1e-5)
    assert got["target_mse"] == pytest.approx(target_err / 120, rel=1e-5)
    assert got["target"] == prediction and got["n"] == 120


def test_metrics_of_a_network_are_skipped_for_the_oracle():
    data = Dataset("digits", train=torch.zeros(2, 1, 8, 8), test=torch.zeros(2, 1, 8, 8), levels=17)
    for name in ("test_loss", "vlb"):
        assert skip_reason(METRICS[name], data, False) == "needs a trained network (the oracle has none)"
        assert skip_reason(METRICS[name], data, True) is None
    assert skip_reason(METRICS["ode_nll"], data, False) is None  # the oracle's denoiser has a likelihood too


def test_values_print_with_their_error_bars():
    from diffctl.evaluation import _pm

    assert _pm(10.56, 2.08) == "10.6 ± 2.1" and _pm(0.8312, 0.0213) == "0.831 ± 0.021" and _pm(3.2217) == "3.222"
    assert _pm(1234.5, 87.0) == "1234 ± 87" and _pm(None) == ""
    # a diverged model's numbers print as they are instead of crashing the table
    assert _pm(float("nan"), float("nan")) == "nan" and _pm(2.0, float("inf")) == "2" and _pm(1.0, -0.5) == "1"
