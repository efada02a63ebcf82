"""Samplers against their textbook updates and an analytic Gaussian denoiser."""

import pytest
import torch

from diffctl.core.samplers import SAMPLERS, ancestral_step, sample_ddim, sample_ddpm
from diffctl.core.schedules import make_alpha_bar, sampling_sigmas, sigmas_from_alpha_bar
from diffctl.generation import PerImageNoise


def gaussian_denoiser(mu: float, s: float):
    """Exact E[x0 | x] for x0 ~ N(mu, s^2 I) and x = x0 + sigma z."""
    return lambda x, sigma: (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)


def test_ddim_eta0_step_equals_textbook_eq12():
    """One sigma-space DDIM step equals Song et al. eq. 12 in the x_t variable."""
    ab = make_alpha_bar("linear", 1000)
    t, t_prev = 700, 500
    torch.manual_seed(0)
    x_t = torch.randn(5, 3).double()
    eps_model = lambda x_t_, t_: torch.sin(x_t_) * 0.3 + 0.1 * t_ / 1000  # any eps network
    # textbook: x_{t-1} = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev) * eps
    eps = eps_model(x_t, t)
    x0_hat = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
    expected = ab[t_prev].sqrt() * x0_hat + (1 - ab[t_prev]).sqrt() * eps
    # sigma space: the denoiser for this eps-network, in the scaled variable
    sig = sigmas_from_alpha_bar(ab)

    def denoise(x, sigma):
        tt = t if torch.isclose(sigma, sig[t]) else t_prev
        a = ab[tt]
        return x - sigma * eps_model(x * a.sqrt(), tt)

    x = x_t / ab[t].sqrt()
    out = sample_ddim(denoise, x, torch.stack([sig[t], sig[t_prev]]))
    assert torch.allclose(out * ab[t_prev].sqrt(), expected, atol=1e-10)


def test_ddpm_step_is_the_posterior_of_ddpm_eqs_6_7():
    ab = make_alpha_bar("cosine", 1000)
    t, t_prev = 400, 399
    beta = 1 - ab[t] / ab[t_prev]
    torch.manual_seed(1)
    x_t, x0, z = torch.randn(4, 2).double(), torch.randn(4, 2).double(), torch.randn(4, 2).double()
    mean = ab[t_prev].sqrt() * beta / (1 - ab[t]) * x0 + (1 - beta).sqrt() * (1 - ab[t_prev]) / (1 - ab[t]) * x_t  # eq. 7
    var = (1 - ab[t_prev]) / (1 - ab[t]) * beta
    sig = sigmas_from_alpha_bar(ab)
    out = sample_ddpm(lambda x, s: x0, x_t / ab[t].sqrt(), torch.stack([sig[t], sig[t_prev]]), noise=lambda i: z)
    assert torch.allclose(out * ab[t_prev].sqrt(), mean + var.sqrt() * z, atol=1e-10)


def test_ddim_eta1_equals_ddpm_given_the_same_noise():
    ab = make_alpha_bar("linear", 1000)
    sigmas = sampling_sigmas("trailing", ab, 20)
    den = gaussian_denoiser(0.5, 0.3)
    x = torch.randn(64, 2).double() * sigmas[0]
    noise = lambda i: torch.full((64, 2), 0.1 * i).double()
    assert torch.allclose(sample_ddim(den, x, sigmas, eta=1.0, noise=noise), sample_ddpm(den, x, sigmas, noise=noise), atol=1e-9)


def test_ancestral_noise_is_ddims_sigma_eta():
    """sigma_up is DDIM's sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev) (Song et
    al. 2021, eq. 16) in the scaled variable (divided by sqrt(a_prev)); sigma_down the rest of sigma_next."""
    ab = make_alpha_bar("cosine", 1000)
    sig = sigmas_from_alpha_bar(ab)
    for t, t_prev in ((900, 700), (300, 299), (50, 10)):
        a_t, a_prev = ab[t].item(), ab[t_prev].item()
        for eta in (0.0, 0.3, 1.0):
            down, up = ancestral_step(sig[t], sig[t_prev], eta)
            expected_up = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5 / a_prev**0.5
            assert up.item() == pytest.approx(expected_up, rel=1e-9, abs=1e-15), (t, eta)
            assert down.item() == pytest.approx((sig[t_prev].item() ** 2 - expected_up**2) ** 0.5, rel=1e-9)


@pytest.mark.parametrize("name,kw", [("ddim", {}), ("ddim", {"eta": 1.0}), ("ddpm", {})])
def test_samplers_converge_to_the_gaussian_data_distribution(name, kw):
    """With the exact denoiser of N(mu, s^2), the error in the sample std shrinks as steps grow."""
    mu, s = 0.5, 0.3
    ab = make_alpha_bar("linear", 1000)
    errors = []
    for steps in (30, 100, 1000):
        sigmas = sampling_sigmas("trailing", ab, steps)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(20_000, 1, generator=g, dtype=torch.float64) * sigmas[0]
        out = SAMPLERS[name](gaussian_denoiser(mu, s), x, sigmas, noise=lambda i: torch.randn(20_000, 1, generator=g, dtype=torch.float64), **kw)
        assert out.mean().item() == pytest.approx(mu, abs=0.015)
        errors.append(abs(out.std().item() - s))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01  # 1000 steps: within sampling noise of the true std


def test_per_image_noise_is_independent_of_batching():
    whole = PerImageNoise(7, 0, 6, (2, 2), torch.device("cpu"))
    parts = [PerImageNoise(7, 0, 4, (2, 2), torch.device("cpu")), PerImageNoise(7, 4, 2, (2, 2), torch.device("cpu"))]
    for _ in range(3):  # successive draws stay aligned too
        assert torch.equal(whole(), torch.cat([p() for p in parts]))
