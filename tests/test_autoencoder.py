"""task=autoencoder: the KL autoencoder's shapes and loss against closed forms, and a short run that
learns to reconstruct digits far better than the best constant image does."""

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, make_trainer

from diffctl.models.autoencoder import KLAutoencoder, autoencoder_loss, psnr


@pytest.mark.parametrize("shape,downsample,latent", [((1, 28, 28), 4, (4, 7, 7)), ((3, 32, 32), 4, (4, 8, 8)), ((3, 32, 32), 8, (4, 4, 4)),
                                                     ((1, 8, 8), 2, (4, 4, 4)), ((1, 8, 8), 1, (4, 8, 8))])
def test_latents_have_the_documented_shapes(shape, downsample, latent):
    ae = KLAutoencoder(shape, downsample=downsample)
    x = torch.randn(2, *shape)
    mean, logvar = ae.encode(x)
    assert ae.latent_shape == latent and mean.shape == logvar.shape == (2, *latent)
    assert ae.decode(mean).shape == x.shape and ae(x, torch.randn(2, *latent))[0].shape == x.shape


def test_the_loss_is_reconstruction_mse_plus_the_weighted_kl_per_latent_element():
    x = torch.zeros(2, 1, 4, 4)
    recon = torch.full_like(x, 0.5)  # MSE 0.25
    mean, logvar = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)  # KL(N(1, 1) || N(0, 1)) = 1/2 per element
    assert torch.allclose(autoencoder_loss(x, recon, mean, logvar, kl_weight=0.1), torch.full((2,), 0.25 + 0.1 * 0.5))
    s2 = torch.tensor(4.0)  # KL(N(0, s^2) || N(0, 1)) = (s^2 - 1 - ln s^2) / 2
    kl = autoencoder_loss(x[:1], x[:1], torch.zeros(1, 1, 1, 1), s2.log().reshape(1, 1, 1, 1), kl_weight=1.0)
    assert kl.item() == pytest.approx((4 - 1 - math.log(4)) / 2)
    assert psnr(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.2)).item() == pytest.approx(10 * math.log10(4 / 0.04))


def test_the_discriminator_and_the_autoencoder_each_get_only_their_own_adversarial_gradient():
    from diffctl.models.autoencoder import Reconstruction

    torch.manual_seed(0)
    assert KLAutoencoder((1, 8, 8), downsample=2).discriminator is None  # disc_weight=0 (the default): no discriminator at all
    net = KLAutoencoder((1, 8, 8), downsample=2, disc_weight=0.5, disc_channels=8)
    x, noise = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randn(6, 4, 4, 4)
    recon, mean, logvar, (fool, critic) = net(x, noise)
    d, ae = list(net.discriminator.parameters()), [*net.encoder.parameters(), *net.decoder.parameters()]
    g_fool = torch.autograd.grad(fool.sum(), d + ae, allow_unused=True)
    assert all(g is None for g in g_fool[:len(d)]) and any(g is not None and g.abs().sum() > 0 for g in g_fool[len(d):])
    g_critic = torch.autograd.grad(critic.sum(), d + ae, allow_unused=True)
    assert all(g is not None for g in g_critic[:len(d)]) and all(g is None for g in g_critic[len(d):])
    # the hinge terms against their definitions, and the total the training step minimises
    logits_fake, logits_real = net.discriminator(recon), net.discriminator(x)
    assert torch.allclose(fool, -logits_fake.flatten(1).mean(1), atol=1e-6)
    expected_critic = 0.5 * ((1 - logits_real).clamp(min=0).flatten(1).mean(1) + (1 + logits_fake).clamp(min=0).flatten(1).mean(1))
    assert torch.allclose(critic, expected_critic, atol=1e-6)
    torch.manual_seed(1)
    total = Reconstruction(net, 1e-4, 0.5).loss(x, noise)
    assert torch.allclose(total, autoencoder_loss(x, recon, mean, logvar, 1e-4) + 0.5 * fool + critic, atol=1e-5)
    net.eval()
    assert len(net(x)) == 3  # reconstructions for pictures and latents: no adversarial terms


@pytest.mark.slow  # measures learning: keeps its size (about 20 s on 2 cores), so not in the fast selection
def test_a_short_run_reconstructs_digits_far_better_than_the_mean_image(tmp_path, cache_dir):
    trainer = make_trainer(tmp_path, "task=autoencoder", "autoencoder.downsample=2", "trainer.steps=300", "trainer.log_every=50",
                           "trainer.batch_size=64", "optim.warmup_steps=100", "trainer.ckpt_every=0", f"paths.cache_dir={cache_dir}")
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in reversed(records) if "test_psnr" in r)
    test = trainer.data.test
    mean_image_psnr = psnr(test, test.mean(0, keepdim=True).expand_as(test)).mean().item()  # the best constant reconstruction
    assert final["step"] == 300 and final["test_psnr"] > mean_image_psnr + 10, (final, mean_image_psnr)
    assert final["test_recon_mse"] < 0.02 and (tmp_path / "samples" / "reconstructions_00000300.png").exists()
    # in the reference classifier's features its reconstructions sit about as far from the train split as real test images
    assert final["test_recon_fd_ref"] < 1.5 * final["test_fd_ref_floor"]


def test_bad_autoencoder_settings_are_one_line_errors(cli):
    assert_one_line_error(cli("train", "task=autoencoder", "dataset=swiss_roll", "trainer.steps=1"), "train", "task=autoencoder compresses images")
    assert_one_line_error(cli("train", "task=autoencoder", "autoencoder.downsample=3", "trainer.steps=1"), "train",
                          "autoencoder.downsample=3: choose 1, 2, 4 or 8")
    assert_one_line_error(cli("train", "task=autoencoder", "autoencoder.downsample=16", "trainer.steps=1"), "train",
                          "autoencoder.downsample=16: choose 1, 2, 4 or 8")
