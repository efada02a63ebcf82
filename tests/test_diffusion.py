"""The forward process and the one preconditioned denoiser: its coefficients against the papers,
round trips of every prediction type, and its loss against a direct computation."""

import pytest
import torch

from diffctl.core import diffusion as D
from diffctl.core import losses as L
from diffctl.core.schedules import make_alpha_bar, sigmas_from_alpha_bar


def test_q_sample_moments_match_ddpm_eq4():
    torch.manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for a in (0.9, 0.3, 0.01):
        xt = D.q_sample(x0, torch.full((len(x0),), a), torch.randn_like(x0))
        assert xt.mean().item() == pytest.approx(a**0.5 * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - a, rel=2e-2)


def _target(prediction, x0, eps, alpha_bar_t):
    """What each parameterisation's paper trains the network to output (DDPM; Salimans & Ho 2022 for v)."""
    a = alpha_bar_t.reshape(-1, *[1] * (x0.ndim - 1))
    return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_denoiser_recovers_x0_from_a_perfect_network(prediction):
    """A network that outputs its paper's target at DDPM's x_t and integer t makes D(x, sigma) return x0."""
    ab = make_alpha_bar("cosine", 1000)
    sig = sigmas_from_alpha_bar(ab)
    torch.manual_seed(2)
    x0, eps = torch.randn(8, 1, 4, 4).double(), torch.randn(8, 1, 4, 4).double()
    t = torch.full((8,), 321)
    x_t = D.q_sample(x0, ab[t], eps)

    def net(x_in, t_cont):
        assert torch.allclose(t_cont, t.float())  # exact timestep at a training sigma
        assert torch.allclose(x_in.double(), x_t, atol=1e-6)  # c_in x is DDPM's x_t for sigma_data = 1
        return _target(prediction, x0, eps, ab[t]).float()

    den = D.Denoiser(net, ab, prediction)
    x = x0 + sig[321] * eps  # the scaled variable
    assert torch.allclose(den(x, sig[321]), x0, atol=1e-5)


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_loss_is_the_squared_error_of_the_papers_target(prediction):
    """Denoiser.loss with the simple weighting is ||F - target||^2 with each paper's own target, and 0 for a perfect network."""
    ab = make_alpha_bar("linear", 1000)
    x0, noise = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    sigma = sigmas_from_alpha_bar(ab)[t]
    target = _target(prediction, x0.double(), noise.double(), ab[t]).float()
    zero = D.Denoiser(lambda x, tt: torch.zeros_like(x), ab, prediction)
    assert torch.allclose(zero.loss(x0, sigma, noise, L.weight_simple), target.pow(2).flatten(1).mean(1), rtol=1e-5)
    perfect = D.Denoiser(lambda x, tt: target, ab, prediction)
    assert perfect.loss(x0, sigma, noise, L.weight_simple).abs().max() < 1e-8


def test_network_sees_the_training_timestep_of_sigma():
    ab = make_alpha_bar("cosine", 1000)
    t = torch.tensor([3, 321, 998])
    seen = []
    D.Denoiser(lambda x, tt: seen.append(tt) or torch.zeros_like(x), ab).loss(torch.zeros(3, 2), sigmas_from_alpha_bar(ab)[t], torch.zeros(3, 2), L.weight_simple)
    assert torch.allclose(seen[0].double(), t.double(), atol=1e-4)


def test_edm_preconditioning_matches_karras_table_1_and_its_loss_weight():
    """v-prediction with sigma_data = 0.5 is EDM's preconditioning (Karras et al. 2022, Table 1, up to
    the sign of F), and EDM's loss weight lambda(sigma) times c_out^2 is 1 at every noise level."""
    sd = 0.5
    sigma = torch.logspace(-3, 2, 11, dtype=torch.float64)
    den = D.Denoiser(lambda x, t: x, make_alpha_bar("edm", 1000), "v", sigma_data=sd)
    c_skip, c_out, c_in = den.coefficients(sigma)
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    assert torch.allclose(c_out.abs(), sigma * sd / (sigma**2 + sd**2).sqrt())
    assert torch.allclose(c_in, 1 / (sd**2 + sigma**2).sqrt())
    assert torch.allclose(L.weight_edm(sigma, den) * c_out**2, torch.ones_like(sigma))
    # and the network's input and target both have unit variance for data of std sigma_data
    g = torch.Generator().manual_seed(0)
    x0, n = sd * torch.randn(100_000, generator=g, dtype=torch.float64), torch.randn(100_000, generator=g, dtype=torch.float64)
    for s in (0.01, 0.5, 20.0):
        cs, co, ci = (c.item() for c in den.coefficients(torch.tensor(s, dtype=torch.float64)))
        x = x0 + s * n
        assert (ci * x).std().item() == pytest.approx(1, abs=0.02) and ((x0 - cs * x) / co).std().item() == pytest.approx(1, abs=0.02)


def test_noisy_classifier_loss_is_the_cross_entropy_on_noised_inputs():
    ab = make_alpha_bar("linear", 1000)
    x0, noise = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    sigma = torch.tensor([0.1, 1.0, 5.0, 20.0, 0.5])
    seen = {}

    def net(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.stack([x_t[:, 0], x_t[:, 1], x_t[:, 2]], 1)

    loss = D.NoisyClassifier(net, ab).loss(x0, y, sigma, noise)
    a = (1 / (1 + sigma.double() ** 2)).float()[:, None]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    assert torch.allclose(seen["x_t"], x_t, atol=1e-6)
    assert torch.allclose(loss, -torch.log_softmax(x_t, 1)[torch.arange(5), y], atol=1e-6)
