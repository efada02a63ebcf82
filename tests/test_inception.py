"""fid / kid / is with torch-fidelity's Inception: random weights from a temp file, never the network."""

import io
import math
import os
import pickle
import shlex
import socket
import urllib.request
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("torch_fidelity")
import torch_fidelity.feature_extractor_inceptionv3 as tfi  # noqa: E402

from diffctl.metrics import METRICS, EvalContext, Skipped, inception  # noqa: E402
from diffctl.metrics.distances import chunked_frechet, kid  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The extractor's architecture with random weights, saved as a plain state dict (nothing downloaded)."""
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = tfi.FeatureExtractorInceptionV3("random", ["2048"], feature_extractor_weights_path=empty)
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    imgs = lambda n: ((torch.rand(n, 1, 8, 8, generator=g) * 16).round() / 8 - 1)  # 17 levels in [-1, 1]
    train, test = imgs(6), imgs(6)
    return SimpleNamespace(name="fake", train=train, test=test, is_image=True, levels=17, shape=tuple(train.shape[1:]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def make_ctx(data, cache_dir, weights_path, samples=None, memo=None):
    x = data.train if samples is None else samples
    return EvalContext(alpha_bar=torch.ones(1, dtype=torch.float64), data=data, samples=lambda: x,
                       cache_dir=cache_dir, memo={} if memo is None else memo,
                       options={"inception_weights": None if weights_path is None else str(weights_path)})


@pytest.fixture
def count_extracted(monkeypatch):
    counts = []
    real = inception.extract

    def counting(net, x, *a, **k):
        counts.append(len(x))
        return real(net, x, *a, **k)

    monkeypatch.setattr(inception, "extract", counting)
    return counts


@pytest.fixture
def no_network(monkeypatch):
    """Every way to the network raises: torch.hub, torch-fidelity's own reference to it, urllib, sockets."""
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_fid_kid_is_end_to_end_and_cached(weights, data, cache, count_extracted, no_network):
    ctx = make_ctx(data, cache, weights)  # samples = the train split: fid and kid ~ 0
    results = {name: METRICS[name].fn(ctx) for name in ("fid", "kid", "is")}
    assert count_extracted == [6, 6, 6]  # train, test, then the samples once for all three metrics
    sha = inception.read_weights(weights)[1][:12]
    for name, r in results.items():
        assert math.isfinite(r["value"]) and math.isfinite(r["floor"]), name
        assert r["feature_extractor"] == {"name": "inception-v3-tf-2015-12-05", "sha256": sha, "protocol": inception.PROTOCOL}
        assert r["torch_fidelity"]
    fid = results["fid"]
    assert abs(fid["value"]) < 1e-6 * max(1.0, fid["floor"]) and fid["floor"] > 0 and fid["n"] == 6
    assert abs(results["kid"]["value"]) < 1e-6 and results["kid"]["subset_std"] >= 0
    assert results["is"]["value"] == pytest.approx(1.0, abs=1e-3) and results["is"]["n"] == 6  # near-constant logits: IS = exp(KL) = 1 and results["is"]["floor_n"] == 6

    files = sorted(cache.glob("inception_fake_*.npz"))
    assert [f.name.split("_")[2] for f in files] == ["test", "train"]  # one file per split, named by its images' hash and the weights'
    assert all(f.name.endswith(f"_{sha}_p{inception.PROTOCOL_VERSION}.npz") for f in files)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = METRICS["is"].fn(make_ctx(data, cache, weights))  # a fresh evaluation: only the samples go through Inception
    assert count_extracted == [6, 6, 6, 6] and again["floor"] == results["is"]["floor"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_fid_kid_is_compute_the_published_formulas_on_informative_features(weights, tmp_path, monkeypatch, no_network):
    # random Inception weights give near-constant features, on which any formula is ~0: replace the
    # extractor's output by fixed random projections of the pixels and check each metric's wiring
    g = torch.Generator().manual_seed(1)
    proj, head = torch.randn(64, 2048, generator=g), torch.randn(64, 1008, generator=g)
    fake = lambda net, x, *a, **k: (torch.tanh(x.flatten(1) @ proj / 8), x.flatten(1) @ head)
    monkeypatch.setattr(inception, "extract", fake)
    imgs = lambda n, shift=0.0: ((torch.rand(n, 1, 8, 8, generator=g) + shift).clamp(0, 1) * 16).round() / 8 - 1
    data = SimpleNamespace(name="wired", train=imgs(60), test=imgs(20), is_image=True, levels=17, shape=(1, 8, 8))
    samples = imgs(40, shift=0.3)
    ctx = make_ctx(data, tmp_path, weights, samples=samples)
    feats = lambda x: fake(None, x)[0]
    got = {name: METRICS[name].fn(ctx) for name in ("fid", "kid", "is")}
    expected_fd = chunked_frechet(feats(samples), feats(data.test), feats(data.train))
    assert got["fid"]["value"] == pytest.approx(expected_fd["value"]) and got["fid"]["chunks"] == 2
    assert got["fid"]["floor"] == pytest.approx(expected_fd["floor"]) and got["fid"]["floor"] < got["fid"]["value"]
    assert (got["kid"]["value"], got["kid"]["subset_std"]) == pytest.approx(kid(feats(samples), feats(data.train), subset_size=20, seed=0))
    assert got["kid"]["floor"] == pytest.approx(kid(feats(data.test), feats(data.train), subset_size=20, seed=0)[0])
    assert got["kid"]["floor"] < got["kid"]["value"]
    assert got["is"]["value"] == pytest.approx(inception.inception_score(fake(None, samples)[1], 10)[0])
    assert got["is"]["floor"] == pytest.approx(inception.inception_score(fake(None, data.test)[1], 10)[0])


def test_without_weights_skipped_with_the_reason(weights, data, cache, no_network):
    with pytest.raises(Skipped) as e:
        METRICS["fid"].fn(make_ctx(data, cache, None))
    assert "no Inception weights on disk" in str(e.value) and "never downloaded" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Skipped, match="not found"):
        METRICS["is"].fn(make_ctx(data, cache, weights.parent / "missing.pth"))


def test_applies_only_to_grey_or_rgb_images(data):
    points = SimpleNamespace(is_image=False, shape=(2,))
    assert METRICS["fid"].applies(points) == "needs image data"
    assert METRICS["kid"].applies(data) is None
    assert "channels" in METRICS["is"].applies(SimpleNamespace(is_image=True, shape=(4, 8, 8)))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_without_running(tmp_path, data, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        (torch.save if how == "torch.save" else pickle.dump)({"fc.weight": Evil(marker)}, f)
    with pytest.raises(ValueError) as e:
        METRICS["fid"].fn(make_ctx(data, tmp_path, path))
    msg = str(e.value)
    assert msg.startswith("not a weights file:") and "\n" not in msg
    assert not marker.exists()


def test_wrong_state_dict_is_a_one_line_error(tmp_path, data):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError) as e:
        METRICS["kid"].fn(make_ctx(data, tmp_path, path))
    assert str(e.value).startswith("not Inception-v3 weights:") and "\n" not in str(e.value)


def test_inception_score_on_hand_made_logits():
    mean, std = inception.inception_score(torch.zeros(50, 1008))  # uniform predictions
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    K = 7
    one_hot = torch.full((10 * K * 3, 1008), -1e4)
    one_hot[torch.arange(len(one_hot)), torch.arange(len(one_hot)) % K] = 0  # each split of 3K items: every class 3 times
    mean, std = inception.inception_score(one_hot, shuffle_seed=None)
    assert mean == pytest.approx(K, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    assert inception.inception_score(one_hot, splits=1)[0] == pytest.approx(K, rel=1e-9)  # the permutation does not matter then
    with pytest.raises(ValueError):
        inception.inception_score(torch.zeros(5, 1008))


def test_inception_score_matches_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(57, 1008, generator=torch.Generator().manual_seed(0)) * 3
    ref = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception.inception_score(logits)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9) and std == pytest.approx(ref["inception_score_std"], rel=1e-7)


def test_kid_and_frechet_distance_agree_with_torch_fidelity():
    """Our KID and FD against torch-fidelity's own functions on the same features: KID over subsets that
    are the whole sets (every permutation gives the same unbiased MMD^2, so both RNGs agree), FD from
    the same Gaussian statistics (n > D, and n < D through our n x n route)."""
    import numpy as np
    from torch_fidelity.metric_fid import fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from diffctl.metrics.distances import frechet_distance, frechet_to_reference, gaussian_stats

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(80, 32, generator=g, dtype=torch.float64), torch.randn(80, 32, generator=g, dtype=torch.float64) * 1.3 + 0.2
    theirs = kid_features_to_metric(a, b, kid_subsets=3, kid_subset_size=80, kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=1,
                                    verbose=False)["kernel_inception_distance_mean"]
    assert kid(a, b, subset_size=80, subsets=3, seed=0)[0] == pytest.approx(theirs, rel=1e-9)
    (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
    expected = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)["frechet_inception_distance"]
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    few = a[:20]  # n = 20 < D = 32
    m3, s3 = gaussian_stats(few)
    expected = fid_statistics_to_metric({"mu": m3, "sigma": s3}, {"mu": mu2, "sigma": s2}, verbose=False)["frechet_inception_distance"]
    assert frechet_to_reference(few, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(expected)
