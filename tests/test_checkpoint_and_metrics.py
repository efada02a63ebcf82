"""Checkpoint safety and the metric math."""

import os
import pickle

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


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "diffctl-checkpoint", "version": 1, "payload": _Evil()}, path, pickle_module=pickle)
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
    from diffctl.metrics.distances import energy_distance, median_bandwidth, mmd_rbf

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
    from diffctl.metrics.distances import density_coverage, precision_recall

    g = torch.Generator().manual_seed(1)
    real = torch.randn(1000, 2, generator=g)
    same = torch.randn(1000, 2, generator=g)
    p, r = precision_recall(real, same)
    d, c = density_coverage(real, same)
    assert p > 0.9 and r > 0.9 and 0.8 < d < 1.2 and c > 0.9
    collapsed = torch.randn(1000, 2, generator=g) * 0.1  # mode collapse: precise but no recall
    p, r = precision_recall(real, collapsed)
    d, c = density_coverage(real, collapsed)
    assert p > 0.95 and r < 0.3 and c < 0.3
    far = real + 20.0
    assert precision_recall(real, far) == (0.0, 0.0) and density_coverage(real, far) == (0.0, 0.0)
