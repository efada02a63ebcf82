"""Latent diffusion: a diffusion model trained in an autoencoder's latent space records the autoencoder it
needs (path and SHA-256) and the scale it measured, samples decode to pixels, and a moved or changed
autoencoder, or a command that cannot use latents yet, is a one-line error."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_folder

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint

AE = ["task=autoencoder", "autoencoder.downsample=2", "trainer.steps=20", "trainer.batch_size=32", "trainer.sample_every=0",
      "trainer.log_every=20", "trainer.eval_every=0", "optim.warmup_steps=5"]
LATENT = ["model=unet_tiny", "trainer.steps=6", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.num_grid=4", "trainer.sample_steps=3",
          "trainer.log_every=2", "trainer.eval_every=0", "optim.warmup_steps=1"]


def test_a_pixel_hole_regenerates_every_latent_position_whose_patch_it_touches():
    from diffctl.latent import latent_mask

    hole = torch.zeros(1, 8, 8)
    hole[0, 5, 6] = 1
    m = latent_mask(hole, (4, 4, 4))
    assert m.shape == (4, 4, 4) and m.sum() == 4 and (m[:, 2, 3] == 1).all()  # pixel (5, 6) lies in the 2x2 patch of latent (2, 3)
    hole = torch.zeros(3, 28, 28)
    hole[1, :, :14] = 1  # one channel's left half (mnist-sized, latents 7x7)
    m = latent_mask(hole, (4, 7, 7))
    assert (m[:, :, :4] == 1).all() and (m[:, :, 4:] == 0).all()  # columns 0-13 touch latent columns 0-3 (patch 3 spans 12-15)


@pytest.mark.slow
def test_a_latent_model_records_its_autoencoder_samples_and_evaluates_in_pixels_and_refuses_a_changed_one(diffctl, cli, cache_dir, tmp_path):
    from diffctl.config import load_option
    from diffctl.data import load_dataset, quantize
    from diffctl.latent import load_autoencoder

    ae = run_folder(diffctl("train", *AE))
    latent = run_folder(diffctl("train", "latent.autoencoder=latest", *LATENT))
    ae_ckpt = list_checkpoints(ae / "checkpoints")[-1]
    state = load_checkpoint(list_checkpoints(latent / "checkpoints")[-1])
    record = state["latent"]
    assert record["autoencoder"] == str(ae_ckpt) and record["sha256"] == hashlib.sha256(ae_ckpt.read_bytes()).hexdigest()
    # the scale: 1 / std of the posterior means of the training split, recomputed here from the autoencoder's EMA weights
    net = load_autoencoder(ae_ckpt, torch.device("cpu"))
    with torch.no_grad():
        means = net.encode(load_dataset(load_option("dataset", "digits")).train)[0]
    assert record["scale"] == pytest.approx(1 / means.std().item(), rel=1e-5)
    assert state["data_shape"] == [4, 4, 4] and record["pixel_shape"] == [1, 8, 8] and state["data_levels"] is None
    # eps-prediction on unclipped latents with the cosine schedule (sigma_max ~ 2e4): warned, with the fix
    assert "model.prediction=eps on unclipped latents with schedule=cosine" in (latent / "train.log").read_text()
    out = run_folder(diffctl("sample", "ckpt=latest", "steps=3", "num_samples=6"))
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (6, 8, 8, 1) and (out / "grid.png").exists()  # decoded: 8x8 pixels, not 4x4x4 latents
    # eval scores the decoded samples in pixels, beside the autoencoder's floor: its reconstructions of the test split
    report = json.loads((run_folder(diffctl("eval", "ckpt=latest", "steps=3", "num_samples=300", "metrics=[test_loss,fd_ref]")) / "metrics.json").read_text())
    fd, floor = report["metrics"]["fd_ref"], report["autoencoder_floor"]
    assert fd["n"] == 300 and math.isfinite(fd["value"]) and math.isfinite(report["metrics"]["test_loss"]["value"])
    assert floor["n"] == 300 and floor["autoencoder"] == str(ae_ckpt) and list(floor["metrics"]) == ["fd_ref"]
    # the floor, recomputed here: Frechet distance of the reconstructions' reference features to the train split's
    from diffctl.metrics.distances import frechet_to_reference, gaussian_stats
    from diffctl.metrics.reference import reference_classifier

    pixels = load_dataset(load_option("dataset", "digits"))
    ref, _ = reference_classifier(pixels, cache_dir)
    with torch.no_grad():
        recon = quantize(net.decode(net.encode(pixels.test)[0]).clamp(-1, 1), pixels.levels)
        mu, sigma = gaussian_stats(ref.features(pixels.train))
        expected = frechet_to_reference(ref.features(recon), mu, sigma)
    assert floor["metrics"]["fd_ref"] == pytest.approx(expected, rel=1e-3)

    # inpainting in the latent space: the image encoded, the left half max-pooled to latent columns 0-1, the known pixels pasted back
    inp = diffctl("sample", f"ckpt={latent}", "steps=3", "num_samples=4", "inpaint.image=0", "inpaint.mask=left")
    assert "the 32 masked pixels make 8 of 16 latent positions to regenerate" in inp.stdout + inp.stderr
    assert "known pixels changed by at most 0;" in inp.stdout + inp.stderr and (run_folder(inp) / "inpaint.png").exists()
    # a moved or changed autoencoder: one line each
    original = ae_ckpt.read_bytes()
    ae_ckpt.write_bytes(original + b"\0")
    assert_one_line_error(cli("sample", f"ckpt={latent}"), "sample", "has changed since this latent model was trained on it (SHA-256 mismatch)")
    ae_ckpt.rename(tmp_path / "elsewhere.pt")
    assert_one_line_error(cli("sample", f"ckpt={latent}"), "sample", "which is not there any more (moved or deleted)")
    (tmp_path / "elsewhere.pt").write_bytes(original)
    (tmp_path / "elsewhere.pt").rename(ae_ckpt)
    assert cli("sample", f"ckpt={latent}", "steps=2", "num_samples=2")[0] == 0  # put back as it was: it samples again
    assert_one_line_error(cli("train", f"latent.autoencoder={latent}", *LATENT), "train", "is not an autoencoder (task=diffusion)")
    assert_one_line_error(cli("train", "latent.autoencoder=latest", "task=classifier", *LATENT), "train",
                          "latent.autoencoder trains a diffusion model in an autoencoder's latent space")
