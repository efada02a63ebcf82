"""Loss weightings against their papers, and the training noise-level samplers."""

import pytest
import torch

from diffctl.core import losses as L
from diffctl.core.diffusion import training_target
from diffctl.core.schedules import make_alpha_bar, sigmas_from_alpha_bar


def test_simple_weight_is_plain_target_mse():
    ab = make_alpha_bar("linear", 1000)
    x0, noise = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    sigma = sigmas_from_alpha_bar(ab)[t]
    net = lambda x_t, tt: torch.zeros_like(x_t)
    for pred in ("eps", "x0", "v"):
        got = L.weighted_loss(net, x0, sigma, noise, ab, pred, L.weight_simple)
        target = training_target(pred, x0, noise, ab[t].float())
        assert torch.allclose(got, target.pow(2).flatten(1).mean(1), rtol=1e-5)


def test_network_sees_the_training_timestep_of_sigma():
    ab = make_alpha_bar("cosine", 1000)
    t = torch.tensor([3, 321, 998])
    seen = []
    L.weighted_loss(lambda x, tt: seen.append(tt) or torch.zeros_like(x), torch.zeros(3, 2), sigmas_from_alpha_bar(ab)[t], torch.zeros(3, 2), ab)
    assert torch.allclose(seen[0].double(), t.double(), atol=1e-4)


def test_min_snr_weights_match_hang_et_al_in_each_target_space():
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0], dtype=torch.float64)
    snr, gamma = 1 / sigma**2, 5.0
    effective = lambda pred: L.weight_min_snr(sigma, pred, gamma) * L.x0_error_scale(pred, sigma) ** 2
    assert torch.allclose(effective("eps"), snr.clamp(max=gamma) / snr)  # paper eq. for eps-prediction
    assert torch.allclose(effective("v"), snr.clamp(max=gamma) / (snr + 1))  # and for v-prediction
    assert torch.allclose(effective("x0"), snr.clamp(max=gamma))


def test_edm_weight_and_lognormal_levels():
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(L.weight_edm(sigma, "x0"), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    # c_out^2 lambda = 1: the EDM weighting makes the effective F-target loss unit-weighted
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    assert torch.allclose(L.weight_edm(sigma, "x0") * c_out**2, torch.ones(3, dtype=torch.float64))
    s = L.sigmas_lognormal(200_000, make_alpha_bar("edm", 10), generator=torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.01) and s.log().std().item() == pytest.approx(1.2, abs=0.01)


def test_uniform_t_levels_are_schedule_levels():
    ab = make_alpha_bar("linear", 50)
    s = L.sigmas_uniform_t(5000, ab, generator=torch.Generator().manual_seed(0))
    levels = sigmas_from_alpha_bar(ab)
    assert set(s.tolist()) <= set(levels.tolist()) and len(set(s.tolist())) == 50
