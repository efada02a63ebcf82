"""Guidance and inpainting: the wrappers' formulas, and their effect on the exact Gaussian-mixture oracle."""

import pytest
import torch
from omegaconf import OmegaConf

from diffctl.config import load_option
from diffctl.core.diffusion import NoisyClassifier
from diffctl.core.guidance import classifier_free, classifier_guided, inpainting
from diffctl.core.samplers import SAMPLERS
from diffctl.core.schedules import make_alpha_bar
from diffctl.data import load_dataset
from diffctl.generation import Conditioning, class_labels, generate
from diffctl.optim import drop_labels


def _sampler(name: str, spacing: str = "trailing"):
    return OmegaConf.merge(load_option("sampler", name), {"spacing": spacing})


def _component(oracle, x: torch.Tensor) -> torch.Tensor:
    """The mixture component each point most likely came from."""
    d2 = torch.cdist(x.flatten(1).double(), oracle.means.flatten(1))
    return d2.argmin(1)


def test_classifier_free_combines_conditional_and_unconditional_predictions():
    calls = []

    def fake(x, sigma, y):  # conditional: x + y; unconditional (null = 9): x
        calls.append(len(x))
        return x + torch.where(y == 9, 0.0, y.double())[:, None]

    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([1, 2, 3, 4])
    sigma = torch.tensor(0.7, dtype=torch.float64)
    for w in (0.0, 1.0, 2.5):
        calls.clear()
        out = classifier_free(fake, y, 9, w)(x, sigma)
        assert torch.allclose(out, x + w * y.double()[:, None])
        assert calls == ([4] if w in (0.0, 1.0) else [8])  # w = 0 or 1: one pass; else both in one batch
    # rescale (Lin et al. 2024, Alg. 2) on the eps prediction: eps_cond = A, eps_uncond = B
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps_of = lambda y_: torch.where((y_ == 9)[:, None], torch.cat([B, B])[: len(y_)], torch.cat([A, A])[: len(y_)])
    fake_eps = lambda x_, s, y_: x_ - s.reshape(-1, 1) * eps_of(y_)
    w, phi = 4.0, 0.7
    cfg_eps = B + w * (A - B)
    rescaled = cfg_eps * A.std(1, keepdim=True) / cfg_eps.std(1, keepdim=True)
    out = classifier_free(fake_eps, y, 9, w, phi)(x, sigma)
    assert torch.allclose((x - out) / sigma, phi * rescaled + (1 - phi) * cfg_eps)


def test_guided_oracle_samples_land_in_the_requested_component():
    data = load_dataset(load_option("dataset", "digits_gmm"))
    oracle, ab = data.oracle, make_alpha_bar("linear", 1000)
    for name in ("ddim", "dpmpp_2m", "euler_ancestral"):
        for w in (1.0, 3.0):
            cond = Conditioning(class_labels(40, [3, 7]), oracle.num_classes, w)
            out = generate(oracle, ab, _sampler(name), 20, 40, data.shape, cond=cond)
            assert (_component(oracle, out.samples) == cond.labels).all(), (name, w)
            assert out.nfe == 20 * (2 if w != 1.0 else 1)
    # w = 0 is the unconditional model: the requested classes do not matter, all components appear
    x = generate(oracle, ab, _sampler("ddim"), 20, 200, data.shape, cond=Conditioning(class_labels(200, [3]), oracle.num_classes, 0.0)).samples
    assert len(set(_component(oracle, x).tolist())) >= 8


@pytest.mark.parametrize("dataset", ["gmm", "digits_gmm"])
def test_classifier_guidance_with_the_exact_posterior_is_the_conditional_denoiser(dataset):
    # grad log p(x | y) = grad log p(x) + grad log p(y | x) and Tweedie: D + sigma^2 grad log p(y | x) = D(., y), exactly
    oracle = load_dataset(load_option("dataset", dataset)).oracle
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12) % oracle.num_classes
    unconditional = lambda x, s: oracle(x, s)
    for sigma in (0.01, 0.3, 2.0, 40.0):
        x = oracle.sample(12, generator=g)[0].double() + sigma * torch.randn((12, *oracle.means.shape[1:]), generator=g, dtype=torch.float64)
        s = torch.tensor(sigma, dtype=torch.float64)
        guided = classifier_guided(unconditional, oracle.log_posterior, y, 1.0)(x, s)
        assert torch.allclose(guided, oracle(x, s, y), atol=1e-9), sigma
        assert torch.equal(classifier_guided(unconditional, oracle.log_posterior, y, 0.0)(x, s), oracle(x, s))
        # scale s multiplies the correction
        twice = classifier_guided(unconditional, oracle.log_posterior, y, 2.0)(x, s)
        assert torch.allclose(twice - oracle(x, s), 2 * (oracle(x, s, y) - oracle(x, s)), atol=1e-9)


def test_classifier_guided_sampling_matches_conditional_sampling_on_the_oracle():
    data = load_dataset(load_option("dataset", "digits_gmm"))
    oracle, ab = data.oracle, make_alpha_bar("linear", 1000)
    labels = class_labels(30, [2, 5, 8])
    conditional = generate(oracle, ab, _sampler("ddim"), 15, 30, data.shape, cond=Conditioning(labels, oracle.num_classes, 1.0)).samples
    # w = 0 (the unconditional oracle) plus classifier guidance with the exact posterior at s = 1
    cond = Conditioning(labels, oracle.num_classes, 0.0, classifier=oracle.log_posterior, classifier_scale=1.0)
    out = generate(oracle, ab, _sampler("ddim"), 15, 30, data.shape, cond=cond)
    guided = out.samples
    assert (_component(oracle, guided) == labels).all()
    assert torch.allclose(guided, conditional, atol=1e-4)
    assert out.nfe == 15 and out.classifier_nfe == 15
    # an unconditional model (null = 0): classifier guidance alone; s = 0 is plain unconditional sampling
    uncond = lambda x, s: oracle(x, s)
    out = generate(uncond, ab, _sampler("ddim"), 15, 30, data.shape, cond=Conditioning(labels, None, classifier=oracle.log_posterior))
    assert (_component(oracle, out.samples) == labels).all() and out.nfe == 15
    out = generate(uncond, ab, _sampler("ddim"), 15, 30, data.shape, cond=Conditioning(labels, None, classifier=oracle.log_posterior, classifier_scale=0.0))
    plain = generate(uncond, ab, _sampler("ddim"), 15, 30, data.shape).samples
    assert torch.equal(out.samples, plain) and out.classifier_nfe == 0


def test_noisy_classifier_sees_the_network_variables():
    # a "network" that is the exact posterior written in (x_t, t): NoisyClassifier must give back log p(k | x, sigma)
    from diffctl.core.schedules import sigmas_from_alpha_bar

    oracle = load_dataset(load_option("dataset", "gmm")).oracle
    ab = make_alpha_bar("cosine", 1000)
    sig_t = sigmas_from_alpha_bar(ab)

    def net(x_t, t):
        sigma = sig_t[t.round().long()]
        return oracle.log_posterior(x_t.double() * (1 + sigma[:, None] ** 2).sqrt(), sigma).float() + 3.0  # logits: any offset

    x = torch.randn(6, 2, dtype=torch.float64) * 3
    for t in (0, 100, 500, 990):
        s = sig_t[t]
        assert torch.allclose(NoisyClassifier(net, ab)(x, s), oracle.log_posterior(x, s), atol=1e-4), t


def test_label_dropout_rate_is_honoured():
    y = torch.randint(0, 10, (40_000,), generator=torch.Generator().manual_seed(0))
    for p in (0.0, 0.1, 0.5, 1.0):
        dropped = drop_labels(y, p, 10, torch.Generator().manual_seed(1))
        rate = (dropped == 10).double().mean().item()
        assert rate == pytest.approx(p, abs=0.01)
        assert torch.equal(dropped[dropped != 10], y[dropped != 10])  # kept labels are untouched


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_inpainting_leaves_the_known_pixels_unchanged(name):
    data = load_dataset(load_option("dataset", "digits_gmm"))
    known, keep = data.test[0], torch.ones(data.shape)
    keep[:, :, :4] = 0  # regenerate the left half
    cond = Conditioning(known=known, mask=keep)
    x = generate(data.oracle, make_alpha_bar("linear", 1000), _sampler(name), 10, 6, data.shape, cond=cond).samples
    assert ((x - known) * keep).abs().max().item() < 1e-5
    assert ((x - known) * (1 - keep)).abs().max().item() > 0.1  # and the rest was generated


def test_repaint_resampling_keeps_known_pixels_and_costs_n_times():
    data = load_dataset(load_option("dataset", "digits_gmm"))
    known, keep = data.test[1], torch.ones(data.shape)
    keep[:, :4] = 0  # regenerate the top half
    out = generate(data.oracle, make_alpha_bar("linear", 1000), _sampler("ddpm"), 10, 4, data.shape,
                   cond=Conditioning(known=known, mask=keep, resample=3))
    assert ((out.samples - known) * keep).abs().max().item() < 1e-6 and out.nfe == 30 and out.sampler.startswith("repaint")


def test_inpainting_wrapper_feeds_the_noised_known_region():
    seen = {}

    def spy(x, sigma):
        seen["x"] = x.clone()
        return torch.zeros_like(x)

    known, keep, z = torch.ones(1, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.full((1, 4), 0.5)
    out = inpainting(spy, known, keep, z)(torch.full((1, 4), 7.0), torch.tensor(2.0))
    assert torch.equal(seen["x"], torch.tensor([[2.0, 2.0, 7.0, 7.0]]))  # known + sigma z where known, x elsewhere
    assert torch.equal(out, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_inpainting_inputs_from_png_files(tmp_path):
    import numpy as np
    from PIL import Image

    from diffctl.config import GuidanceConfig
    from diffctl.errors import UsageError
    from diffctl.runtime import Source
    from diffctl.steering import conditioning_from_config

    data = load_dataset(load_option("dataset", "digits_gmm"))
    source = Source(data.oracle, make_alpha_bar("linear", 1000), data, {}, num_classes=10)
    img = np.zeros((8, 8), np.uint8)
    img[2:6, 3:5] = 255
    hole = np.zeros((8, 8), np.uint8)
    hole[:, 6:] = 255  # white = regenerate the two right columns
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray(hole).save(tmp_path / "hole.png")
    cfg = lambda **inp: OmegaConf.create({"num_samples": 4, "classes": None, "guidance": OmegaConf.structured(GuidanceConfig),
                                          "inpaint": {"image": None, "mask": None, "resample": 1, **inp}})
    cond = conditioning_from_config(cfg(image=str(tmp_path / "img.png"), mask=str(tmp_path / "hole.png")), source)
    assert cond.known.shape == (1, 8, 8) and cond.known[0, 3, 3] == 1 and cond.known[0, 0, 0] == -1
    assert cond.mask[0, :, 6:].sum() == 0 and cond.mask[0, :, :6].sum() == 48  # 1 = known
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(UsageError, match="is 9x9; this model's images are 8x8"):
        conditioning_from_config(cfg(image=str(tmp_path / "big.png"), mask="left"), source)
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(UsageError, match="cannot read image"):
        conditioning_from_config(cfg(image=str(tmp_path / "bad.png"), mask="left"), source)


def test_checkpoints_from_before_conditioning_still_build():
    # a model config saved before model.num_classes existed: an unconditional model, not "Missing key"
    from diffctl.models import build_model

    old = OmegaConf.create({"arch": "unet", "prediction": "eps", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                            "attn_resolutions": [4], "dropout": 0.0, "heads": 4})
    net = build_model(old, (1, 8, 8))
    assert net.label_embed.table is None and net(torch.zeros(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)
