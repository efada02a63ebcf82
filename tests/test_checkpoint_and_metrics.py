"""Checkpoint safety and the metric math."""

import os

import numpy as np
import pytest
import torch

from diffctl.errors import UsageError
from diffctl.io.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, save_checkpoint
from diffctl.metrics.distances import frechet_distance, gaussian_stats, sliced_wasserstein


def test_save_load_round_trip_and_pruning(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / f"step_{step:08d}.pt", {"step": step, "w": torch.arange(3.0) * step, "config": {"a": [1, "b"]}})
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temp files left behind
    state = load_checkpoint(tmp_path / "step_00000003.pt")
    assert state["step"] == 3 and torch.equal(state["w"], torch.tensor([0.0, 3.0, 6.0])) and state["config"] == {"a": [1, "b"]}
    prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002.pt", "step_00000003.pt"]


def test_truncated_checkpoint_is_a_usage_error(tmp_path):
    path = save_checkpoint(tmp_path / "step_00000001.pt", {"step": 1, "w": torch.randn(1000)})
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(UsageError, match="not a valid diffctl checkpoint"):
        load_checkpoint(path)


def test_foreign_torch_file_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="is not a diffctl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_rotated_covariances():
    """FD between N(0, S) and N(0, R S R^T) for a rotation R: the closed form 2 tr(S) - 2 tr((S R S R^T)^1/2)."""
    s = np.diag([4.0, 1.0])
    c, si = np.cos(np.pi / 2), np.sin(np.pi / 2)
    r = np.array([[c, -si], [si, c]])
    # rotating by 90 degrees swaps the variances: FD = (2 - 1)^2 + (1 - 2)^2 = 2
    assert frechet_distance(np.zeros(2), s, np.zeros(2), r @ s @ r.T) == pytest.approx(2.0, abs=1e-9)


def test_gaussian_stats_and_identical_sets():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    mu, cov = gaussian_stats(x)
    assert np.allclose(cov, np.cov(x.numpy(), rowvar=False)) and frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-8)
    assert sliced_wasserstein(x[:, :2], x[:, :2]) == 0
    assert sliced_wasserstein(x[:, :2], x[:, :2] + 1.0) > 0.5


def test_two_sample_distances_vanish_for_one_distribution_and_grow_with_a_shift():
    from diffctl.metrics.distances import energy_distance, median_bandwidth, mmd2_unbiased, rbf_kernel

    mmd_rbf = lambda a, b, h: mmd2_unbiased(a, b, rbf_kernel(h))

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g)
    h = median_bandwidth(a)
    shifted = b + torch.tensor([1.0, 0.0])
    assert abs(mmd_rbf(a, b, h)) < 0.01 and abs(energy_distance(a, b)) < 0.03
    assert mmd_rbf(a, shifted, h) > 0.1
    # energy distance of N(0, I) and N(mu, I) in 1-D has a closed form: 2 E|X-Y| - 2 E|X-X'| with X-Y ~ N(mu, 2)
    x, y = torch.randn(4000, 1, generator=g), torch.randn(4000, 1, generator=g) + 1.0
    s = 2**0.5
    e_xy = s * (2 / np.pi) ** 0.5 * np.exp(-1 / (2 * s**2)) + 1.0 * (1 - 2 * (0.5 * (1 + __import__("math").erf(-1 / (s * 2**0.5)))))
    e_xx = s * (2 / np.pi) ** 0.5
    assert energy_distance(x, y) == pytest.approx(2 * e_xy - 2 * e_xx, abs=0.03)


def test_precision_recall_density_coverage():
    from diffctl.metrics.distances import prdc

    g = torch.Generator().manual_seed(1)
    real = torch.randn(1000, 2, generator=g)
    same = torch.randn(1000, 2, generator=g)
    p, r, d, c = prdc(real, same)()
    assert p > 0.9 and r > 0.9 and 0.8 < d < 1.2 and c > 0.9
    collapsed = torch.randn(1000, 2, generator=g) * 0.1  # mode collapse: precise but no recall
    p, r, d, c = prdc(real, collapsed)()
    assert p > 0.95 and r < 0.3 and c < 0.3
    assert prdc(real, real + 20.0)() == (0.0, 0.0, 0.0, 0.0)


def test_bootstrap_error_of_a_mean_is_its_standard_error():
    from diffctl.metrics.distances import bootstrap_std

    x = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se = bootstrap_std(lambda ids: x[ids].mean().item(), len(x), resamples=2000)
    assert se == pytest.approx(x.std().item() / 20, rel=0.1)
    lo, hi = bootstrap_std(lambda ids: (x[ids].mean().item(), 2 * x[ids].mean().item()), len(x), resamples=200)
    assert hi == pytest.approx(2 * lo)


def test_copies_in_a_bootstrap_resample_are_not_their_own_neighbours():
    from diffctl.metrics.distances import prdc

    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g)
    ids = torch.arange(200).repeat(2)  # every item twice, as a resample of fake
    # each other item is a neighbour twice, so the 3rd-nearest distinct row is the 2nd-nearest item,
    # and the copies of a point never count as its neighbours (else its radius would be its 1st neighbour's)
    assert prdc(real, fake, k_pr=3)(ids)[1] == prdc(real, fake, k_pr=2)()[1]
    assert prdc(real, fake)(ids)[0] == prdc(real, fake)()[0]


def test_jackknife_error_matches_the_spread_over_fresh_samples():
    from diffctl.metrics.distances import frechet_to_reference, jackknife_std

    g = torch.Generator().manual_seed(8)
    x = torch.randn(400, generator=g, dtype=torch.float64)
    # the mean: the grouped jackknife gives the standard error
    assert jackknife_std(lambda ids: x[ids].mean().item(), len(x)) == pytest.approx(x.std().item() / 20, rel=0.3)
    # a 16-d FD at n = 200: jackknife estimate vs the spread over 40 fresh sets
    mu, sigma = gaussian_stats(torch.randn(4000, 16, generator=g))
    sets = [torch.randn(200, 16, generator=g) * 1.2 for _ in range(40)]
    spread = np.std([frechet_to_reference(s, mu, sigma) for s in sets])
    estimate = np.mean([jackknife_std(lambda ids: frechet_to_reference(s[ids], mu, sigma), 200) for s in sets[:10]])
    assert 0.6 < estimate / spread < 1.6


def test_kid_is_unbiased_near_zero_and_grows_with_a_shift():
    from diffctl.metrics.distances import kid

    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(500, 16, generator=g), torch.randn(500, 16, generator=g)
    same, spread = kid(a, b, subset_size=100, subsets=200)
    shifted, _ = kid(a, b + 0.5, subset_size=100, subsets=200)
    assert abs(same) < 3 * spread / 200**0.5 + 1e-3 and shifted > 20 * max(abs(same), spread / 200**0.5)
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], b)


def test_chunked_frechet_has_an_equal_count_floor_and_error_bars():
    from diffctl.metrics.distances import chunked_frechet

    g = torch.Generator().manual_seed(5)
    ref, held_out = torch.randn(2000, 4, generator=g), torch.randn(300, 4, generator=g)
    good = chunked_frechet(torch.randn(1000, 4, generator=g), held_out, ref)
    bad = chunked_frechet(torch.randn(1000, 4, generator=g) * 1.5 + 0.5, held_out, ref)
    assert good["chunks"] == 3 and good["n"] == 300 and good["floor"] == bad["floor"]
    assert good["err"] > 0 and good["floor_err"] > 0
    assert abs(good["value"] - good["floor"]) < 3 * (good["err"] + good["floor_err"]) < bad["value"] - bad["floor"]
    with pytest.raises(ValueError, match="at least 300"):
        chunked_frechet(torch.randn(100, 4), held_out, ref)


@pytest.mark.parametrize("n", [5, 40])
def test_frechet_to_reference_from_features_matches_the_covariance_formula(n):
    from scipy.linalg import sqrtm

    from diffctl.metrics.distances import frechet_to_reference

    g = torch.Generator().manual_seed(6)
    x, ref = torch.randn(n, 12, generator=g) * 1.3 + 0.2, torch.randn(500, 12, generator=g)
    mu, sigma = gaussian_stats(ref)
    m, s = gaussian_stats(x)
    textbook = ((m - mu) ** 2).sum() + np.trace(s) + np.trace(sigma) - 2 * np.trace(sqrtm(s @ sigma)).real
    # n <= D: the n x n route; n > D: the D x D one (scipy's sqrtm struggles with the rank-deficient product: 1e-6)
    assert frechet_to_reference(x, mu, sigma) == pytest.approx(textbook, rel=1e-6)


def test_sliced_wasserstein_of_unequal_sets_interpolates_quantiles():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(400, 2, generator=g)
    # every point twice: the same empirical distribution, distance ~0 (up to the interpolation at the ends)
    assert sliced_wasserstein(a, torch.cat([a, a])) < 0.02
    # a shift by c along every direction's projection: W2 = |c . dir| averaged in quadrature
    b = torch.randn(1000, 2, generator=g)
    assert sliced_wasserstein(a, b + torch.tensor([3.0, 0.0])) == pytest.approx(3.0 / 2**0.5, rel=0.1)
