"""The sampler suite on the exact Gaussian-mixture oracle: no training, closed-form truth."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from diffctl.config import load_option
from diffctl.core.samplers import SAMPLERS
from diffctl.core.schedules import make_alpha_bar, sigmas_karras
from diffctl.data.toy2d import oracle as gmm_oracle
from diffctl.metrics.distances import sliced_wasserstein
from diffctl.models.oracle import GMMDenoiser
from diffctl.sample import generate

ALL = sorted(SAMPLERS)


def nfe_per_step(name: str, steps: int) -> int:
    """What each sampler should cost: Heun 2 evaluations per step but the last, the others one."""
    return 2 * steps - 1 if name == "heun" else steps


def test_oracle_is_the_posterior_mean():
    """Single component: D is the Gaussian formula; two components: a Monte-Carlo check of E[x0 | x]."""
    one = GMMDenoiser(torch.tensor([[0.5, -1.0]]), 0.3)
    x, sigma = torch.randn(5, 2).double(), torch.tensor(0.7)
    assert torch.allclose(one(x, sigma), (0.09 * x + 0.49 * torch.tensor([0.5, -1.0])) / (0.09 + 0.49))
    two = GMMDenoiser(torch.tensor([[-1.0], [2.0]]), 0.5)
    g = torch.Generator().manual_seed(0)
    x0, _ = two.sample(400_000, g)
    xs = x0.double() + 1.0 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    near = (xs - 0.8).abs() < 0.02  # condition on x ~ 0.8
    assert x0.double()[near].mean().item() == pytest.approx(two(torch.tensor([[0.8]]), torch.tensor(1.0)).item(), abs=0.02)


def test_oracle_log_density_is_normalised():
    d = GMMDenoiser(torch.tensor([[0.0], [3.0]]), 0.4)
    grid = torch.linspace(-4, 7, 20001, dtype=torch.float64)[:, None]
    assert torch.trapezoid(d.log_density(grid).exp(), dx=11 / 20000).item() == pytest.approx(1.0, abs=1e-6)


def _solve(name, steps, z, **kw):
    return SAMPLERS[name](gmm_oracle(), z * 80.0, sigmas_karras(0.002, 80.0, steps), **kw)


@pytest.fixture(scope="module")
def ode_reference():
    """Starting noise and its probability-flow ODE solution (third-order UniPC, 2,000 steps)."""
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return z, _solve("unipc", 2000, z, order=3)


@pytest.mark.parametrize("name,low,high", [("euler", 0.85, 1.3), ("ddim", 0.85, 1.3), ("heun", 1.7, 2.6), ("dpmpp_2m", 1.7, 2.6), ("unipc", 2.3, 3.6)])
def test_ode_samplers_have_their_order(name, low, high, ode_reference):
    """Error against the reference falls as NFE^-p: the log-log slope over 32..128 steps."""
    z, ref = ode_reference
    steps = np.array([32, 64, 128])
    errors = np.array([(_solve(name, int(n), z) - ref).abs().mean().item() for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert low < slope < high, (name, errors, slope)


def test_ddim_eta0_is_the_euler_step_of_the_pf_ode():
    """Against a plain Euler loop on dx/dsigma = (x - D(x, sigma)) / sigma, written out here."""
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas, den = sigmas_karras(0.002, 80.0, 12), gmm_oracle()
    x = z * 80.0
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        x = x + (x - den(x, s0)) / s0 * (s1 - s0)
    assert torch.allclose(_solve("ddim", 12, z), x, atol=1e-10)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_euler_ancestral_matches_k_diffusion_update(eta):
    """Euler to sigma_down = sqrt(s'^2 - up^2), then noise * up, up = eta s' sqrt(s^2 - s'^2) / s."""
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    noise = lambda i: torch.full_like(z, math.sin(i))
    sigmas, den = sigmas_karras(0.002, 80.0, 10), gmm_oracle()
    x = z * 80.0
    for i, (s0, s1) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        up = min(s1, eta * s1 * (s0**2 - s1**2).sqrt() / s0) if s1 > 0 else s1 * 0
        down = (s1**2 - up**2).sqrt()
        x = x + (x - den(x, s0)) / s0 * (down - s0) + (noise(i) * up if s1 > 0 else 0)
    assert torch.allclose(_solve("euler_ancestral", 10, z, eta=eta, noise=noise), x, atol=1e-9)


def test_dpmpp_2m_matches_algorithm_2():
    """DPM-Solver++(2M), Lu et al. 2022b Algorithm 2, written out with lambda = -log sigma."""
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sigmas, den = sigmas_karras(0.002, 80.0, 8), gmm_oracle()
    x, prev, h_prev = z * 80.0, None, None
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        x0 = den(x, s0)
        if s1 == 0:
            x = x0
        else:
            h = torch.log(s0 / s1)
            d = x0 if prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * prev
            x = s1 / s0 * x - torch.expm1(-h) * d
            h_prev = h
        prev = x0
    assert torch.allclose(_solve("dpmpp_2m", 8, z), x, atol=1e-9)


@pytest.mark.parametrize("name,kw", [(n, {}) for n in ALL] + [("heun", {"S_churn": 10.0}), ("unipc", {"order": 3})])
def test_every_sampler_converges_to_the_data_distribution(name, kw):
    """On the 8-component mixture: sliced Wasserstein to true samples shrinks with steps and ends near the floor."""
    g = torch.Generator().manual_seed(3)
    truth, _ = gmm_oracle().sample(3000, g)
    floor = sliced_wasserstein(truth, gmm_oracle().sample(3000, g)[0])
    z = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    noise = lambda i: torch.randn(z.shape, generator=g, dtype=torch.float64)
    swd = [sliced_wasserstein(_solve(name, n, z, noise=noise, **kw).float(), truth) for n in (3, 60)]
    assert swd[1] < swd[0] and swd[1] < floor + 0.03, (swd, floor)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m_sde"])
def test_ancestral_samplers_keep_the_exact_marginals(name):
    """With fine steps, every intermediate x at noise level sigma has the marginal N(mu, s^2 + sigma^2).

    (With coarse steps the ancestral step uses E[x0 | x] and drops Var[x0 | x], so it is exact only
    in the limit; 400 steps bring that below the sampling noise here.)
    """
    mu, s = 0.5, 0.3
    den = lambda x, sigma: (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)
    sigmas = sigmas_karras(0.01, 20.0, 400)
    g = torch.Generator().manual_seed(4)
    n = 20_000
    x = mu + (s**2 + sigmas[0] ** 2).sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
    seen = []
    SAMPLERS[name](den, x, sigmas, noise=lambda i: torch.randn(x.shape, generator=g, dtype=torch.float64),
                   callback=lambda i, sigma, x_, x0: seen.append((sigmas[i + 1].item(), x_.std().item(), x_.mean().item())))
    for sigma_next, std, mean in seen[20::60]:
        true_std = math.sqrt(s**2 + sigma_next**2)
        assert std == pytest.approx(true_std, rel=0.03) and mean == pytest.approx(mu, abs=5 * true_std / math.sqrt(n))


@pytest.mark.parametrize("name", ALL)
def test_image_i_is_the_same_whatever_the_batch_size(name):
    cfg = load_option("sampler", name)
    ab = make_alpha_bar("linear", 1000)
    a, info = generate(gmm_oracle(), ab, cfg, 6, 7, (2,), seed=5, batch_size=7)
    b, _ = generate(gmm_oracle(), ab, cfg, 6, 7, (2,), seed=5, batch_size=3)
    assert torch.equal(a, b)
    assert info["nfe"] == nfe_per_step(name, 6) and info["timesteps"][0] == 999


def test_karras_spacing_on_a_discrete_schedule_through_generate():
    cfg = OmegaConf.merge(load_option("sampler", "heun"), {"spacing": "karras"})
    x, info = generate(gmm_oracle(), make_alpha_bar("linear", 1000), cfg, 10, 4, (2,))
    assert info["nfe"] == 19 and info["timesteps"][0] == 999 and x.shape == (4, 2)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine", "sigmoid", "edm"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "karras"])
def test_every_sampler_runs_with_every_schedule_and_spacing(schedule, spacing):
    ab = make_alpha_bar(schedule, 1000)
    for name in ALL:
        cfg = OmegaConf.merge(load_option("sampler", name), {"spacing": spacing})
        x, info = generate(gmm_oracle(), ab, cfg, 4, 3, (2,), seed=0)
        assert torch.isfinite(x).all() and info["nfe"] == nfe_per_step(name, 4), (name, schedule, spacing)
