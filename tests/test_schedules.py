"""Schedules and discretisations against their published formulas."""

import math

import pytest
import torch

from diffctl.core import schedules as S


def test_linear_matches_ddpm_formula():
    ab = S.make_alpha_bar("linear", 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    expected = torch.tensor([math.prod(1 - b for b in betas[: t + 1].tolist()) for t in (0, 1, 499, 999)], dtype=torch.float64)
    assert torch.allclose(ab[[0, 1, 499, 999]], expected, rtol=1e-10)
    assert torch.allclose(S.betas_from_alpha_bar(ab), betas, atol=1e-12)
    assert ab.dtype == torch.float64 and ab.shape == (1000,)


def test_cosine_matches_improved_ddpm_eq17():
    T, s = 1000, 0.008
    ab = S.make_alpha_bar("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (1, 10, 500, 900):  # paper index t = 1..T is our index t - 1
        assert ab[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    betas = S.betas_from_alpha_bar(ab)
    assert betas.max().item() == pytest.approx(0.999)  # the clip at t = T
    assert (betas > 0).all() and (ab[1:] < ab[:-1]).all()


def test_sigma_and_snr_are_consistent():
    ab = S.make_alpha_bar("cosine", 100)
    sig = S.sigmas_from_alpha_bar(ab)
    assert torch.allclose(S.snr(ab), 1 / sig**2)
    assert torch.allclose(1 / (1 + sig**2), ab)


def test_unknown_schedule_and_bad_steps_raise():
    with pytest.raises(ValueError, match="choose from"):
        S.make_alpha_bar("nope", 10)
    with pytest.raises(ValueError, match="steps must be"):
        S.sampling_sigmas("trailing", S.make_alpha_bar("linear", 10), 11)
    with pytest.raises(ValueError, match="unknown spacing 'nope'; choose from: leading, trailing, linspace, karras"):
        S.sampling_sigmas("nope", S.make_alpha_bar("linear", 10), 5)


@pytest.mark.parametrize("spacing", S.SPACINGS.names())
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_spacings_are_decreasing_in_range(spacing, steps):
    ab = S.make_alpha_bar("cosine", 1000)
    sig, levels = S.sampling_sigmas(spacing, ab, steps), S.sigmas_from_alpha_bar(ab)
    assert len(sig) == steps + 1 and sig[-1] == 0 and (sig[1:] < sig[:-1]).all()
    assert levels[0] - 1e-12 <= sig[:-1].min() and sig[:-1].max() <= levels[-1] + 1e-9


def test_spacing_values():
    assert S.timesteps_trailing(1000, 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert S.timesteps_leading(1000, 10).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert S.timesteps_linspace(1000, 4).tolist() == [999, 666, 333, 0]
    assert S.timesteps_trailing(1000, 1000).tolist() == list(range(999, -1, -1))
    ab = S.make_alpha_bar("linear", 1000)
    assert torch.equal(S.sampling_sigmas("leading", ab, 10)[:-1], S.sigmas_from_alpha_bar(ab)[S.timesteps_leading(1000, 10)])


def test_sigma_to_t_is_exact_at_training_timesteps_and_monotone():
    ab = S.make_alpha_bar("linear", 1000)
    sig = S.sigmas_from_alpha_bar(ab)
    t = torch.tensor([0, 1, 17, 500, 999])
    assert torch.allclose(S.sigma_to_t(sig[t], ab), t.double(), atol=1e-9)
    mid = (sig[10] * sig[11]).sqrt()  # geometric midpoint -> t = 10.5
    assert S.sigma_to_t(mid, ab).item() == pytest.approx(10.5, abs=1e-9)
    sigmas = S.sampling_sigmas("trailing", ab, 5)
    assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()


def test_scaled_linear_matches_latent_diffusion():
    ab = S.make_alpha_bar("scaled_linear", 1000)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(S.betas_from_alpha_bar(ab), betas, atol=1e-12)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)


def test_sigmoid_matches_chen_2023_algorithm_1():
    T, start, end, tau = 1000, -3.0, 3.0, 1.0
    sig = lambda z: 1 / (1 + math.exp(-z))
    gamma = lambda t: (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))
    ab = S.make_alpha_bar("sigmoid", T)
    for i in (1, 250, 500, 999):
        assert ab[i - 1].item() == pytest.approx(gamma(i / T), rel=1e-9)
    assert ab[-1].item() == pytest.approx(1e-9)  # gamma(1) = 0, clipped
    assert ab[499].item() == pytest.approx(0.5, abs=1e-3)  # symmetric around t = T/2


def test_edm_levels_follow_karras_eq5():
    ab = S.make_alpha_bar("edm", 100)
    sig = S.sigmas_from_alpha_bar(ab)
    assert sig[0].item() == pytest.approx(0.002, rel=1e-6) and sig[-1].item() == pytest.approx(80.0, rel=1e-6)
    i = 37
    expected = (0.002 ** (1 / 7) + i / 99 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert sig[i].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_zero_terminal_snr_rescale_lin_et_al(name):
    plain = S.make_alpha_bar(name, 1000)
    ab = S.make_alpha_bar(name, 1000, zero_terminal_snr=True)
    assert ab[0].item() == pytest.approx(plain[0].item(), rel=1e-12)  # sqrt(alpha_bar_1) kept
    assert 0 < ab[-1].item() < 1e-6 and ab[-1] == min(ab[-2] ** 2 / ab[-3], plain[-1])  # ~zero SNR, sigma finite
    assert (ab[1:] < ab[:-1]).all()
    # Algorithm 1 is affine in sqrt(alpha_bar): interior points follow the same map
    s, s0, sT = plain.sqrt(), plain[0].sqrt(), plain[-1].sqrt()
    assert torch.allclose(ab[1:-1].sqrt(), ((s - sT) * s0 / (s0 - sT))[1:-1], rtol=1e-10)


def test_karras_spacing_spans_the_schedule():
    ab = S.make_alpha_bar("linear", 1000)
    sig = S.sigmas_from_alpha_bar(ab)
    ks = S.sampling_sigmas("karras", ab, 10, rho=7.0)
    assert len(ks) == 11 and ks[-1] == 0 and (ks[1:] < ks[:-1]).all()
    assert ks[0].item() == pytest.approx(sig[-1].item()) and ks[-2].item() == pytest.approx(sig[0].item())
    ramp = (ks[:-1] ** (1 / 7)).diff()
    assert torch.allclose(ramp, ramp[0].expand_as(ramp))  # equally spaced in sigma^(1/rho)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_discrete_spacings_visit_exactly_the_requested_timesteps(spacing):
    ab = S.make_alpha_bar("cosine", 1000)
    for steps in (1, 10, 25):
        sigmas = S.sampling_sigmas(spacing, ab, steps)
        visited = S.sigma_to_t(sigmas[:-1], ab)
        assert torch.allclose(visited, {"leading": S.timesteps_leading, "trailing": S.timesteps_trailing, "linspace": S.timesteps_linspace}[spacing](1000, steps).double(), atol=1e-6)
    trailing = S.sigma_to_t(S.sampling_sigmas("trailing", ab, 10)[:-1], ab)
    assert trailing[0].item() == pytest.approx(999)  # the first step is at the last timestep


def test_zero_terminal_snr_with_the_smallest_schedule():
    ab = S.make_alpha_bar("linear", 2, zero_terminal_snr=True)
    assert ab.shape == (2,) and 0 < ab[-1] < ab[0]
