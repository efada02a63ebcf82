"""Loss weightings against their papers, and the training noise-level samplers."""

import pytest
import torch

from diffctl.core import losses as L
from diffctl.core.diffusion import Denoiser
from diffctl.core.schedules import make_alpha_bar, sigmas_from_alpha_bar


def _denoiser(prediction, sigma_data=1.0):
    return Denoiser(lambda x, t: x, make_alpha_bar("linear", 1000), prediction, sigma_data)


def test_min_snr_weights_match_hang_et_al_in_each_target_space():
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0], dtype=torch.float64)
    snr, gamma = 1 / sigma**2, 5.0
    effective = lambda pred: L.weight_min_snr(sigma, _denoiser(pred), gamma) * _denoiser(pred).coefficients(sigma)[1] ** 2
    assert torch.allclose(effective("eps"), snr.clamp(max=gamma) / snr)  # paper eq. for eps-prediction
    assert torch.allclose(effective("v"), snr.clamp(max=gamma) / (snr + 1))  # and for v-prediction
    assert torch.allclose(effective("x0"), snr.clamp(max=gamma))


def test_simple_weight_is_uniform_on_each_target():
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0], dtype=torch.float64)
    for pred in ("eps", "x0", "v"):
        d = _denoiser(pred)
        assert torch.allclose(L.weight_simple(sigma, d) * d.coefficients(sigma)[1] ** 2, torch.ones_like(sigma))


def test_edm_weight_uses_the_denoisers_sigma_data_and_lognormal_levels():
    sigma = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(L.weight_edm(sigma, _denoiser("x0", 0.5)), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    assert torch.allclose(L.weight_edm(sigma, _denoiser("x0", 1.0)), (sigma**2 + 1) / sigma**2)
    s = L.LOSSES.build({"name": "edm"}).sigmas(200_000, make_alpha_bar("edm", 10), generator=torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.01) and s.log().std().item() == pytest.approx(1.2, abs=0.01)
    s = L.LOSSES.build({"name": "edm", "p_mean": 0.5, "p_std": 0.3}).sigmas(200_000, None, generator=torch.Generator().manual_seed(0))
    assert s.log().mean().item() == pytest.approx(0.5, abs=0.01) and s.log().std().item() == pytest.approx(0.3, abs=0.01)


def test_min_snr_gamma_comes_from_the_config():
    sigma = torch.tensor([0.1, 1.0], dtype=torch.float64)
    w = L.LOSSES.build({"name": "min_snr", "gamma": 2.0}).weight(sigma, _denoiser("eps"))
    assert torch.allclose(w, torch.tensor([2.0, 1.0], dtype=torch.float64))


def test_uniform_t_levels_are_schedule_levels():
    ab = make_alpha_bar("linear", 50)
    s = L.sigmas_uniform_t(5000, ab, generator=torch.Generator().manual_seed(0))
    levels = sigmas_from_alpha_bar(ab)
    assert set(s.tolist()) <= set(levels.tolist()) and len(set(s.tolist())) == 50
