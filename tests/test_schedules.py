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
        S.sampling_timesteps("trailing", 10, 11)


@pytest.mark.parametrize("spacing", sorted(S.SPACINGS))
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_spacings_are_decreasing_in_range(spacing, steps):
    ts = S.sampling_timesteps(spacing, 1000, steps)
    assert len(ts) == steps and ts.min() >= 0 and ts.max() <= 999
    assert (ts[1:] < ts[:-1]).all()


def test_spacing_values():
    assert S.sampling_timesteps("trailing", 1000, 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert S.sampling_timesteps("leading", 1000, 10).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert S.sampling_timesteps("linspace", 1000, 4).tolist() == [999, 666, 333, 0]
    assert S.sampling_timesteps("trailing", 1000, 1000).tolist() == list(range(999, -1, -1))


def test_sigma_to_t_is_exact_at_training_timesteps_and_monotone():
    ab = S.make_alpha_bar("linear", 1000)
    sig = S.sigmas_from_alpha_bar(ab)
    t = torch.tensor([0, 1, 17, 500, 999])
    assert torch.allclose(S.sigma_to_t(sig[t], ab), t.double(), atol=1e-9)
    mid = (sig[10] * sig[11]).sqrt()  # geometric midpoint -> t = 10.5
    assert S.sigma_to_t(mid, ab).item() == pytest.approx(10.5, abs=1e-9)
    sigmas = S.sigmas_at(ab, S.sampling_timesteps("trailing", 1000, 5))
    assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
