"""diffctl export: safetensors weights and a JSON config that rebuild the model, inside diffctl and out."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, assert_one_line_error, run_folder

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint


def test_an_export_holds_the_ema_weights_and_samples_as_its_checkpoint(diffctl, trained):
    from safetensors.torch import load_file

    run = trained("pixel")
    export = run_folder(diffctl("export", f"ckpt={run}"))
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    weights = load_file(str(export / "model.safetensors"))  # safetensors' own reader: no diffctl needed
    assert weights.keys() == state["ema"].keys() and all(torch.equal(weights[k], state["ema"][k]) for k in weights)
    record = json.loads((export / "diffctl.json").read_text())
    assert record["step"] == 4 and record["weights"] == "ema" and record["data_shape"] == [1, 8, 8]
    assert record["config"]["model"] == state["config"]["model"]

    raw = run_folder(diffctl("export", f"ckpt={run}", "ema=false"))
    assert all(torch.equal(load_file(str(raw / "model.safetensors"))[k], state["model"][k]) for k in state["model"])

    a = run_folder(diffctl("sample", f"ckpt={export}", "steps=4", "num_samples=8"))
    b = run_folder(diffctl("sample", f"ckpt={run}", "steps=4", "num_samples=8"))
    assert np.array_equal(np.load(a / "samples.npz")["images"], np.load(b / "samples.npz")["images"])
    assert json.loads((a / "sample.json").read_text())["checkpoint_step"] == 4


def test_broken_exports_are_one_line_errors(tmp_path, cli, diffctl, trained):
    run = trained("pixel")
    export = run_folder(diffctl("export", f"ckpt={run}"))
    assert_one_line_error(cli("export", "format=onnx"), "export", "format='onnx' is not allowed; choose from: safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(cli("sample", f"ckpt={tmp_path / 'junk.safetensors'}"), "sample", "is not a diffctl export")
    record = (export / "diffctl.json").read_text()
    (export / "diffctl.json").write_text("[1, 2]")
    assert_one_line_error(cli("sample", f"ckpt={export}"), "sample", "is not a diffctl export record")
    (export / "diffctl.json").write_text(record)
    (export / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    assert_one_line_error(cli("sample", f"ckpt={export}"), "sample", "cannot read the export")


TINY_DIFFUSERS = [*TINY_TRAIN, "model=diffusers_unet", "model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.prediction=v"]


def test_a_diffusers_export_loads_in_diffusers_and_samples_as_its_checkpoint(diffctl):
    from diffusers import DDPMScheduler, UNet2DModel

    from diffctl.core.schedules import make_alpha_bar
    from diffctl.runtime import load_trained

    run = run_folder(diffctl("train", *TINY_DIFFUSERS))
    export = run_folder(diffctl("export", f"ckpt={run}", "format=diffusers"))
    assert not (export / "model.safetensors").exists()  # the weights are the pipeline's unet/; diffctl.json records the run
    assert json.loads((export / "diffctl.json").read_text())["weights"] == "ema (unet/)"
    ckpt = list_checkpoints(run / "checkpoints")[-1]
    ours = load_trained(ckpt, torch.device("cpu")).net
    theirs = UNet2DModel.from_pretrained(str(export / "unet")).eval()  # diffusers' own loader
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.0, 321.0, 999.0])
    with torch.no_grad():
        assert torch.allclose(ours(x, t), theirs(x, t).sample, atol=1e-5)
    scheduler = DDPMScheduler.from_pretrained(str(export / "scheduler"))
    assert scheduler.config.prediction_type == "v_prediction"
    assert torch.allclose(scheduler.alphas_cumprod.double(), make_alpha_bar("cosine", 1000), rtol=1e-4)  # its float32 copy of the schedule
    a = run_folder(diffctl("sample", f"ckpt={export}", "steps=5", "num_samples=8", "sampler=unipc"))
    b = run_folder(diffctl("sample", f"ckpt={run}", "steps=5", "num_samples=8", "sampler=unipc"))
    assert np.array_equal(np.load(a / "samples.npz")["images"], np.load(b / "samples.npz")["images"])


def _pixel_statistics(images: np.ndarray) -> np.ndarray:
    """Mean, standard deviation and the share of black or white pixels of images in [0, 1]."""
    return np.array([images.mean(), images.std(), ((images < 0.01) | (images > 0.99)).mean()])


@pytest.mark.slow
def test_diffusers_own_pipeline_samples_an_export_as_diffctl_samples_its_checkpoint(diffctl):
    """DDPMPipeline at its defaults (1,000 ancestral steps) on the exported folder draws what diffctl's DDPM draws from
    the checkpoint: without x0 clamping (clip_sample=False, as exports wrote before), 99.9% of the pixels of a trained
    model saturate to black or white."""
    from diffusers import DDPMPipeline

    run = run_folder(diffctl("train", "model=diffusers_unet", "model.block_out_channels=[8,16]", "model.norm_num_groups=4",
                             "trainer.steps=400", "trainer.batch_size=64", "trainer.sample_every=0", "trainer.eval_every=0"))
    export = run_folder(diffctl("export", f"ckpt={run}", "format=diffusers"))
    pipe = DDPMPipeline.from_pretrained(str(export))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.timestep_spacing == "trailing" and pipe.scheduler.config.variance_type == "fixed_small"
    theirs = pipe(batch_size=64, generator=torch.Generator().manual_seed(0), output_type="np").images  # [0, 1], 1,000 steps
    ours = run_folder(diffctl("sample", f"ckpt={run}", "sampler=ddpm", "steps=1000", "num_samples=64", "seed=1"))
    ours = np.load(ours / "samples.npz")["images"] / 255.0
    a, b = _pixel_statistics(theirs), _pixel_statistics(ours)
    # two draws of 64 digits: each statistic agrees to a few hundredths (measured: 0.309/0.333/0.160 vs 0.313/0.334/0.153);
    # the unclamped pipeline gives 0.41/0.49/0.9998
    assert np.all(np.abs(a - b) < [0.04, 0.04, 0.05]), (a, b)


def test_a_foreign_diffusers_folder_samples_and_is_scored_with_a_dataset(diffctl, tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = tmp_path / "foreign"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100, beta_schedule="linear")).save_pretrained(str(folder))
    proc = diffctl("sample", f"ckpt={folder}", "steps=4", "num_samples=5", "sampler=dpmpp_2m")
    assert "accelerate" not in proc.stdout + proc.stderr  # diffusers' "pip install accelerate" advice is not diffctl's to print
    sample = run_folder(proc)
    record = json.loads((sample / "sample.json").read_text())
    assert record["format"] == "diffusers" and record["nfe"] == 4 and np.load(sample / "samples.npz")["images"].shape == (5, 8, 8, 1)
    bad = diffctl("eval", f"ckpt={folder}", "metrics=[test_loss]", check=False)
    assert bad.returncode == 2 and "eval needs dataset=" in bad.stderr
    ev = run_folder(diffctl("eval", f"ckpt={folder}", "dataset=digits", "metrics=[test_loss]", "num_samples=10", "steps=3"))
    assert json.loads((ev / "metrics.json").read_text())["metrics"]["test_loss"]["value"] > 0
