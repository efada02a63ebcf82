"""Super-resolution (task=superres, SR3): the low-resolution image is the area mean of each patch, the network
reads it concatenated to its input, SSIM and PSNR have their closed forms, and the CLI trains, samples
(low-res | bicubic | samples | real) and evaluates against bicubic upsampling, with one-line errors."""

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, run_folder

from diffctl.metrics.image_quality import psnr, ssim, superres_scores
from diffctl.superres import LowResCond, bicubic, downsample, gaussian_blur

FAST = ["task=superres", "model=unet_tiny", "trainer.steps=4", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.num_grid=8",
        "trainer.sample_steps=2", "trainer.log_every=2", "trainer.eval_every=0", "optim.warmup_steps=1"]


def test_area_downsampling_bicubic_and_blur():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # the mean of each 2x2 patch
    flat = torch.full((1, 1, 4, 4), 0.3)
    assert torch.allclose(bicubic(downsample(flat, 2), 2), flat) and torch.allclose(gaussian_blur(flat, 1.0), flat)
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1
    k = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 2)
    k = k / k.sum()  # sigma 1: the normalised Gaussian over -3..3, separable
    assert torch.allclose(gaussian_blur(point, 1.0)[0, 0, 1:8, 1:8], k[:, None] * k[None, :], atol=1e-7)


def test_psnr_and_ssim_closed_forms():
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3)) and (psnr(x, x) > 100).all()
    assert psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.2)).item() == pytest.approx(10 * math.log10(4 / 0.04), rel=1e-5)
    # constant images a and b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) everywhere
    a, b, c1 = 0.5, -0.25, (0.01 * 2) ** 2
    assert ssim(torch.full((1, 1, 8, 8), a), torch.full((1, 1, 8, 8), b)).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)
    noisy = [ssim(x, (x + s * torch.randn_like(x)).clamp(-1, 1)).mean().item() for s in (0.05, 0.2, 0.8)]
    assert 1 > noisy[0] > noisy[1] > noisy[2]


def test_superres_scores_of_the_real_images_are_perfect_and_consistent():
    real = torch.rand(4, 1, 8, 8) * 2 - 1
    scores = superres_scores(real, downsample(real, 2), real, 2)
    assert scores["ssim"] == pytest.approx(1.0) and scores["psnr"] > 100 and scores["consistency_mse"] < 1e-12
    assert scores["psnr_bicubic"] < 40 and scores["consistency_mse_bicubic"] > 0


def test_the_condition_is_the_downsampled_image_dropped_to_blank_and_augmented_only_in_training():
    cond = LowResCond((1, 8, 8), factor=2, noise=0.3, blur=1.0)
    x0, g = torch.rand(200, 1, 8, 8), torch.Generator().manual_seed(0)
    assert torch.equal(cond.draw(x0, None, 0.0, g), downsample(x0, 2))  # held-out draws: exact, no augmentation
    y = cond.draw(x0, None, 0.2, g)
    blank = (y == 0).flatten(1).all(1)
    assert blank.float().mean().item() == pytest.approx(0.2, abs=0.08)
    assert not torch.allclose(y[~blank], downsample(x0, 2)[~blank])  # augmented
    net = cond.network({"arch": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}, (1, 8, 8))
    assert net.net.stem.in_channels == 2  # the image and its upsampled low-res copy
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 7.0]), downsample(x0[:2], 2))
    assert out.shape == (2, 1, 8, 8)


def test_cli_trains_samples_and_evaluates_a_superres_model(diffctl, cli, trained, tmp_path):
    from PIL import Image

    run = trained("superres")
    assert list((run / "samples").glob("superres_*.png"))  # the final snapshot: low-res | bicubic | samples | real
    out = run_folder(diffctl("sample", "superres.image=[3,5]", "num_samples=4", "steps=2"))
    record = json.loads((out / "sample.json").read_text())
    assert record["superres"]["inputs"] == ["test 3", "test 5"] and (out / "superres.png").exists()
    assert record["superres"]["psnr_bicubic"] > 0 and "consistency_mse" in record["superres"]
    Image.new("L", (4, 4), 200).save(tmp_path / "low.png")  # a low-resolution input: no real image to compare with
    record = json.loads((run_folder(diffctl("sample", f"superres.image={tmp_path / 'low.png'}", "num_samples=2", "steps=2")) / "sample.json").read_text())
    assert "psnr" not in record["superres"] and record["superres"]["inputs"] == ["low.png"]
    report = json.loads((run_folder(diffctl("eval", "num_samples=300", "steps=2", "metrics=[test_loss]")) / "metrics.json").read_text())
    m = report["metrics"]
    assert {"sr_psnr", "sr_ssim", "sr_consistency", "test_loss"} <= set(m) and m["sr_psnr"]["n"] == 300
    assert m["sr_psnr"]["floor_is"] == "bicubic upsampling" and m["sr_ssim"]["floor"] > 0.5  # bicubic's SSIM on digits
    Image.new("L", (5, 5), 200).save(tmp_path / "odd.png")
    assert_one_line_error(cli("sample", f"superres.image={tmp_path / 'odd.png'}"), "sample", "is 5x5; this 2x model takes 4x4 inputs (or 8x8 images")
    assert_one_line_error(cli("sample", "superres.image=[0,999]"), "sample", "the test split has images 0..299")
    assert_one_line_error(cli("sample", "classes=[3]"), "sample", "steered by its low-resolution inputs")
    assert_one_line_error(cli("train", *FAST, "dataset=swiss_roll"), "train", "task=superres upsamples images")
    assert_one_line_error(cli("train", *FAST, "superres.factor=3"), "train", "superres.factor=3 is not allowed")
    assert_one_line_error(cli("sample", f"ckpt={trained('pixel')}", "superres.image=3"), "sample", "superres.image= is for a super-resolution model")
