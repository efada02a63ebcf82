"""Forward process moments, parameterisation round trips, the denoiser wrapper."""

import pytest
import torch

from diffctl.core import diffusion as D
from diffctl.core.schedules import make_alpha_bar, sigmas_from_alpha_bar


def test_q_sample_moments_match_ddpm_eq4():
    torch.manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for a in (0.9, 0.3, 0.01):
        xt = D.q_sample(x0, torch.full((len(x0),), a), torch.randn_like(x0))
        assert xt.mean().item() == pytest.approx(a**0.5 * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - a, rel=2e-2)


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_target_and_inverse_round_trip(prediction):
    torch.manual_seed(1)
    x0, eps = torch.randn(16, 3), torch.randn(16, 3)
    a = torch.rand(16).clamp(0.05, 0.95).double()
    xt = D.q_sample(x0.double(), a, eps.double())
    target = D.training_target(prediction, x0.double(), eps.double(), a)
    x0_hat, eps_hat = D.output_to_x0_eps(prediction, target, xt, a)
    assert torch.allclose(x0_hat, x0.double(), atol=1e-10)
    assert torch.allclose(eps_hat, eps.double(), atol=1e-10)


def test_v_target_formula():
    x0, eps, a = torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([0.36])
    assert D.training_target("v", x0, eps, a).item() == pytest.approx(0.6 * 2.0 - 0.8 * 1.0)


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_denoiser_recovers_x0_from_a_perfect_network(prediction):
    """A network that outputs the true target makes D(x, sigma) return the true x0."""
    ab = make_alpha_bar("cosine", 1000)
    sig = sigmas_from_alpha_bar(ab)
    torch.manual_seed(2)
    x0, eps = torch.randn(8, 1, 4, 4).double(), torch.randn(8, 1, 4, 4).double()
    t = torch.full((8,), 321)

    def net(x_t, t_cont):
        assert torch.allclose(t_cont, t.float())  # exact timestep at a training sigma
        return D.training_target(prediction, x0, eps, ab[t]).float()

    den = D.Denoiser(net, ab, prediction)
    x = x0 + sig[321] * eps  # the scaled variable
    assert torch.allclose(den(x, sig[321]), x0, atol=1e-5)
