"""The variational bound: its pieces against closed forms."""

import math

import pytest
import torch

from diffctl.core import likelihood as L
from diffctl.core.diffusion import Denoiser, q_sample
from diffctl.core.schedules import make_alpha_bar


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_decoder_bin_probabilities_sum_to_one(levels):
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    for mean, log_scale in [(0.0, -1.0), (0.93, -4.0), (-2.0, 0.5)]:
        lp = L.discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale), levels)
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_decoder_interior_bin_is_the_cdf_difference():
    x, mean, scale = torch.tensor([0.25], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64), 0.1
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    expected = cdf((0.25 + 1 / 16 - 0.2) / scale) - cdf((0.25 - 1 / 16 - 0.2) / scale)
    got = L.discretized_gaussian_log_likelihood(x, mean, torch.tensor([math.log(scale)], dtype=torch.float64), 17).exp().item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_normal_kl_closed_form():
    kl = L.normal_kl(torch.tensor(1.0), torch.tensor(math.log(4.0)), torch.tensor(0.0), torch.tensor(0.0))
    assert kl.item() == pytest.approx(0.5 * (4.0 + 1.0 - 1.0 - math.log(4.0)))
    assert L.normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0)).item() == 0


def test_posterior_matches_ddpm_eq7():
    ab = make_alpha_bar("linear", 1000)
    x0, x_t = torch.tensor([0.5]).double(), torch.tensor([-0.2]).double()
    mean, logvar = L.posterior(ab, 500, x0, x_t)
    beta = 1 - ab[500] / ab[499]
    assert logvar.exp().item() == pytest.approx(((1 - ab[499]) / (1 - ab[500]) * beta).item())
    assert mean.item() == pytest.approx((ab[499].sqrt() * beta / (1 - ab[500]) * 0.5 + (1 - beta).sqrt() * (1 - ab[499]) / (1 - ab[500]) * -0.2).item())


def _bound(predict, shape):
    """(x0, alpha_bar, the whole bound per item in nats) for random 17-level x0 of ``shape`` and a denoiser
    whose estimate is ``predict(x0)`` at every step (linear schedule, T = 1000, one x_t draw per term)."""
    ab = make_alpha_bar("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 17, shape, generator=g).double() / 16) * 2 - 1
    total = L.prior_nats(x0, ab)
    for t in range(1000):
        x_t = q_sample(x0, ab[t].expand(len(x0)), torch.randn(x0.shape, generator=g, dtype=torch.float64))
        total = total + L.vlb_term(x0, x_t, predict(x0), ab, t, 17)
    return x0, ab, total


def test_a_perfect_denoiser_pays_only_prior_and_decoder():
    """With x0_hat = x0 every KL term vanishes (the closed form of a zero denoiser is tested below)."""
    _, _, perfect = _bound(lambda x0: x0, (4, 1, 8, 8))
    assert (L.nats_to_bits_per_dim(perfect, 64) < 0.01).all()  # prior ~ 0 and the decoder puts ~all mass in the bin


def _gaussian_denoiser(mu: torch.Tensor, s: float):
    """E[x0 | x0 + sigma z] for x0 ~ N(mu, s^2 I): the analytic score of Gaussian data."""
    return lambda x, sigma: mu + s**2 / (s**2 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2) * (x - mu)


def _gaussian_logp(x: torch.Tensor, mu: torch.Tensor, var: float) -> torch.Tensor:
    d = x[0].numel()
    return -0.5 * ((x - mu) ** 2).flatten(1).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)


@pytest.mark.parametrize("probes", [None, 64])
def test_ode_likelihood_of_gaussian_data_matches_the_exact_nll(probes):
    g = torch.Generator().manual_seed(0)
    mu, s, smin, smax = torch.tensor([0.3, -0.5, 0.1]), 0.4, 0.01, 200.0
    x = (mu + s * torch.randn(64, 3, generator=g, dtype=torch.float64)).double()
    exact = _gaussian_logp(x, mu, s**2 + smin**2)
    # with the exact prior N(mu, s^2 + smax^2) only the solver's error remains
    prior = lambda y: _gaussian_logp(y, mu, s**2 + smax**2)
    got = L.ode_log_likelihood(_gaussian_denoiser(mu, s), x, smin, smax, steps=96, probes=probes, generator=g, prior_logp=prior)
    if probes is None:
        assert torch.allclose(got, exact, atol=5e-3)
    else:  # Hutchinson: unbiased per item; the mean over items is tight
        assert got.mean().item() == pytest.approx(exact.mean().item(), abs=0.05)
        assert (got - exact).abs().max().item() < 0.5
    # the default N(0, smax^2) prior differs by O(|mu| / smax): small for smax >> the data's scale
    default = L.ode_log_likelihood(_gaussian_denoiser(mu, s), x, smin, smax, steps=96)
    assert torch.allclose(default, exact, atol=2e-2)


def test_ode_likelihood_rejects_bad_ranges():
    with pytest.raises(ValueError, match="sigma_min"):
        L.ode_log_likelihood(lambda x, s: x, torch.zeros(1, 2), 1.0, 0.5)


def test_dequantized_bits_per_dim_of_a_uniform_density_is_log2_levels():
    # a uniform density on [-1 - w/2, 1 + w/2]^D (the dequantisation support) gives P(bin) = 1 / levels
    levels, dims = 17, 5
    width = 2 / (levels - 1)
    nll = torch.tensor([dims * math.log(2 + width)], dtype=torch.float64)
    assert L.dequantized_bits_per_dim(nll, dims, levels).item() == pytest.approx(math.log2(levels))


def _cdf(v: float) -> float:
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def _bin_probability(x: float, mean: float, std: float, levels: int) -> float:
    """P(x's bin) under N(mean, std^2), the outermost bins open (DDPM Sec. 3.3), by hand."""
    h = 1 / (levels - 1)
    upper = 1.0 if x > 1 - h else _cdf((x + h - mean) / std)
    lower = 0.0 if x < -1 + h else _cdf((x - h - mean) / std)
    return upper - lower


def test_the_vlb_metric_at_three_steps_equals_the_bound_computed_by_hand(tmp_path):
    """DDPM eq. 5 at T = 3 with plain floats: prior KL, two Gaussian KLs of posterior means (eq. 7, shared
    variance beta_tilde), and the decoder with improved DDPM's clipped variance beta_tilde_1 (the
    posterior variance of the next step, since beta_tilde_0 = 0) over 5 levels, at the metric's own draws."""
    from diffctl.data import Dataset
    from diffctl.metrics import METRICS, EvalContext

    ab = [0.95, 0.6, 0.2]
    levels = 5
    x0 = torch.tensor([[-1.0, -0.5], [0.0, 1.0], [0.5, 0.5]]).view(3, 1, 1, 2)
    net = lambda x, t: 0.8 * torch.tanh(x) + 0.05 * t.view(-1, 1, 1, 1)  # an x0-predicting "network" of x_t and t
    data = Dataset("tiny", train=x0, test=x0, levels=levels)
    ab_t = torch.tensor(ab, dtype=torch.float64)
    got = METRICS["vlb"].fn(EvalContext(ab_t, data, None, tmp_path, seed=7, denoise=Denoiser(net, ab_t, "x0")))

    g = torch.Generator().manual_seed(7)
    draws = [torch.randn(x0.shape, generator=g, dtype=torch.float64) for _ in ab]  # the metric's draws, one per term
    total = [0.0] * 3
    for i in range(3):
        for d in range(2):
            x = x0.view(3, 2)[i, d].item()
            a = ab[-1]
            total[i] += 0.5 * (-1 - math.log(1 - a) + (1 - a) + a * x * x)  # KL(N(sqrt(a) x, 1 - a) || N(0, 1))
            for t in range(3):
                xt = math.sqrt(ab[t]) * x + math.sqrt(1 - ab[t]) * draws[t].view(3, 2)[i, d].item()
                xhat = max(-1.0, min(1.0, 0.8 * math.tanh(torch.tensor(xt, dtype=torch.float32).item()) + 0.05 * t))
                if t == 0:
                    beta1 = 1 - ab[1] / ab[0]
                    var = (1 - ab[0]) / (1 - ab[1]) * beta1
                    total[i] += -math.log(_bin_probability(x, xhat, math.sqrt(var), levels))
                else:
                    beta = 1 - ab[t] / ab[t - 1]
                    var = (1 - ab[t - 1]) / (1 - ab[t]) * beta
                    coef = math.sqrt(ab[t - 1]) * beta / (1 - ab[t])
                    total[i] += (coef * (x - xhat)) ** 2 / (2 * var)
    expected = sum(total) / 3 / (2 * math.log(2))
    assert got["value"] == pytest.approx(expected, rel=1e-5)


def test_a_denoiser_that_predicts_zero_pays_the_closed_form_bound():
    """x0_hat = 0: each KL term is (coef_t x0)^2 / (2 beta_tilde_t) whatever x_t is (the posterior means
    differ by coef_t x0), so the whole bound is a closed form of x0, summed here in floats."""
    x0, ab, got = _bound(torch.zeros_like, (2, 1, 2, 2))
    a = ab.tolist()
    for i in range(2):
        expected = 0.0
        for x in x0[i].flatten().tolist():
            expected += 0.5 * (-1 - math.log(1 - a[-1]) + (1 - a[-1]) + a[-1] * x * x)
            for t in range(1, 1000):
                beta = 1 - a[t] / a[t - 1]
                expected += (math.sqrt(a[t - 1]) * beta / (1 - a[t]) * x) ** 2 / (2 * (1 - a[t - 1]) / (1 - a[t]) * beta)
            var1 = (1 - a[0]) / (1 - a[1]) * (1 - a[1] / a[0])
            expected += -math.log(max(_bin_probability(x, 0.0, math.sqrt(var1), 17), 1e-12))
        assert got[i].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_bound_of_the_exact_denoiser_is_just_above_the_true_nll(tmp_path, schedule):
    """Data uniform on {-1, 1}^4 (2 levels) has NLL 1 bit/dim and the exact denoiser
    E[x0 | x_t] = tanh(sqrt(a) x_t / (1 - a)).  The bound is >= the NLL in expectation (theory) and,
    with T = 1000, close to it: measured 1.0019 +- 0.0047 (linear) and 1.0016 +- 0.0032 (cosine)."""
    from diffctl.data import Dataset
    from diffctl.metrics import METRICS, EvalContext

    ab = make_alpha_bar(schedule, 1000)
    x0 = (torch.randint(0, 2, (400, 1, 2, 2), generator=torch.Generator().manual_seed(0)) * 2 - 1).float()
    a = ab.float()
    net = lambda x, t: torch.tanh(a[t.long()].sqrt().view(-1, 1, 1, 1) * x / (1 - a[t.long()]).view(-1, 1, 1, 1))
    got = METRICS["vlb"].fn(EvalContext(ab, Dataset("binary", train=x0, test=x0, levels=2), None, tmp_path, denoise=Denoiser(net, ab, "x0")))
    assert got["value"] > 1 - 3 * got["stderr"] and got["value"] < 1 + 3 * got["stderr"] + 0.01, got
