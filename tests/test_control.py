"""ControlNet (task=controlnet): at initialisation, and at control.scale=0 always, the controlled network is the
frozen base bit for bit; training changes only the ControlNet branch; controls and their fidelity have
their closed forms; and the CLI trains, samples and evaluates one, with one-line errors."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_folder

from diffctl.control import extract, fidelity
from diffctl.io.checkpoint import list_checkpoints, load_checkpoint
from diffctl.models.controlnet import ControlledUNet
from diffctl.models.unet import UNet

FAST = ["model=unet_tiny", "trainer.steps=4", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.num_grid=8", "trainer.sample_steps=2",
        "trainer.log_every=2", "trainer.eval_every=0", "optim.warmup_steps=1"]


def _base():
    torch.manual_seed(0)
    base = UNet((1, 8, 8), channels=16, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4])
    for m in base.modules():  # blocks start as the identity; make the base a non-trivial function
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)) and not m.weight.abs().sum():
            torch.nn.init.normal_(m.weight, std=0.05)
    return base


def test_a_new_controlnet_is_its_base_bit_for_bit_and_trains_only_its_branch():
    base = _base()
    net = ControlledUNet(base, 1, torch.zeros(1, 8, 8))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([5.0, 50.0, 300.0, 900.0])
    control = (torch.rand(4, 1, 8, 8) > 0.5).float()
    with torch.no_grad():
        expected = base(x, t)
        assert torch.equal(net(x, t, control), expected)  # every zero convolution outputs 0
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(x, t, control).pow(2).mean().backward()
        opt.step()
    assert all(torch.equal(v, frozen[k]) for k, v in base.state_dict().items())  # the base never changes
    assert all(not p.requires_grad for p in base.parameters())
    with torch.no_grad():
        assert not torch.allclose(net(x, t, control), expected)  # the branch now steers it
        assert not torch.allclose(net(x, t, control), net(x, t, 1 - control))  # ... by its control
        net.scale = 0.0
        assert torch.equal(net(x, t, control), expected)  # control.scale=0: the base, bit for bit


def test_controls_and_their_fidelity():
    x = -torch.ones(1, 1, 8, 8)
    x[..., :, 4:] = 1  # a vertical step from black to white between columns 3 and 4
    edges = extract("edges", x)[0, 0]
    assert edges[:, 3:5].all() and edges[:, :3].sum() == 0 and edges[:, 5:].sum() == 0  # Sobel magnitude 4 on each side of the step
    assert extract("edges", x / 4).sum() == 0  # a step of a quarter of the range: magnitude 1, under the threshold of 2
    assert torch.equal(extract("mask", x)[0, 0], (x[0, 0] > 0).float())
    low = extract("lowres", torch.arange(64.0).reshape(1, 1, 8, 8))
    assert low[0, 0, 0, 0] == low[0, 0, 1, 1] == (0 + 1 + 8 + 9) / 4  # each 2x2 patch's mean, enlarged back
    a = torch.zeros(2, 1, 4, 4)
    a[:, :, :2] = 1  # 8 pixels on
    b = a.clone()
    b[1, 0, 0] = 0  # the second drops 4 of them
    assert torch.allclose(fidelity("mask", a, b), torch.tensor([1.0, 4 / 8]))  # IoU
    got = extract("edges", torch.where(a.bool(), 1.0, -1.0))
    assert torch.allclose(fidelity("edges", torch.where(a.bool(), 1.0, -1.0), got), torch.ones(2))
    assert fidelity("edges", torch.where(a.bool(), 1.0, -1.0), torch.zeros_like(a))[0] == 0  # nothing in common: F1 = 0


def test_cli_controlnet_keeps_its_base_and_scale_zero_is_the_base_model(diffctl, cli, trained, tmp_path):
    from PIL import Image

    base = trained("pixel")
    ckpt = list_checkpoints(base / "checkpoints")[-1]
    run = run_folder(diffctl("train", "task=controlnet", f"base={base}", "control=mask", *FAST))
    state = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert state["cond"]["kind"] == "mask" and state["cond"]["base"] == str(ckpt)
    assert list((run / "samples").glob("control_*.png"))  # the final snapshot: control | samples | real
    base_ema = load_checkpoint(ckpt)["ema"]
    for key in ("model", "ema"):
        assert all(torch.equal(state[key]["base." + k], v) for k, v in base_ema.items())  # frozen through training
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in state["model"] if k.startswith("down."))  # the branch trained
    args = ["num_samples=6", "steps=3", "control.image=[0,7]"]
    zero = run_folder(diffctl("sample", f"ckpt={run}", "control.scale=0", *args))
    plain = run_folder(diffctl("sample", f"ckpt={base}", "num_samples=6", "steps=3"))
    assert np.array_equal(np.load(zero / "samples.npz")["images"], np.load(plain / "samples.npz")["images"])
    controlled = run_folder(diffctl("sample", f"ckpt={run}", *args))
    record = json.loads((controlled / "sample.json").read_text())
    assert record["control"]["inputs"] == ["test 0", "test 7"] and (controlled / "control.png").exists()
    assert not np.array_equal(np.load(controlled / "samples.npz")["images"], np.load(plain / "samples.npz")["images"])
    report = json.loads((run_folder(diffctl("eval", f"ckpt={run}", "num_samples=300", "steps=2", "metrics=[test_loss]")) / "metrics.json").read_text())
    assert report["metrics"]["control_fidelity"]["floor"] == pytest.approx(1.0) and report["metrics"]["control_fidelity"]["unit"] == "IoU"
    Image.new("L", (8, 6)).save(tmp_path / "short.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    assert_one_line_error(cli("sample", f"ckpt={run}", f"control.image={tmp_path / 'short.png'}"), "sample", "is 8x6 with 1 channel(s); this ControlNet takes 8x8")
    assert_one_line_error(cli("sample", f"ckpt={run}", f"control.image={tmp_path / 'rgb.png'}"), "sample", "with 3 channel(s)")
    assert_one_line_error(cli("sample", f"ckpt={base}", "control.image=0"), "sample", "control.image and control.scale are for a ControlNet")
    assert_one_line_error(cli("train", "task=controlnet", *FAST), "train", "give base=<its run folder | checkpoint | latest>")
    assert_one_line_error(cli("train", "task=controlnet", f"base={tmp_path / 'nowhere'}", *FAST), "train", "base=")
    assert_one_line_error(cli("train", "task=controlnet", f"base={base}", "dataset=digits_gmm", *FAST), "train",
                          "was trained on dataset=digits [1, 8, 8]; this run's dataset=digits_gmm")
    assert_one_line_error(cli("train", "task=controlnet", f"base={run}", *FAST), "train", "a ControlNet here controls an unconditional")


@pytest.mark.slow
def test_superres_and_controlnet_work_on_a_latent_model_with_conditions_made_from_the_pixels(diffctl, cli):
    ae = ["task=autoencoder", "autoencoder.downsample=2", "trainer.steps=20", "trainer.batch_size=32", "trainer.sample_every=0",
          "trainer.log_every=20", "trainer.eval_every=0", "optim.warmup_steps=5"]
    diffctl("train", *ae)
    latent = ["latent.autoencoder=latest", "model.prediction=v", *FAST]
    sr = run_folder(diffctl("train", "task=superres", *latent))
    state = load_checkpoint(list_checkpoints(sr / "checkpoints")[-1])
    assert state["data_shape"] == [4, 4, 4] and state["cond"]["shape"] == [1, 8, 8]  # latents, conditioned on 4x4 pixel images
    out = run_folder(diffctl("sample", f"ckpt={sr}", "superres.image=[0,1]", "num_samples=4", "steps=2"))
    record = json.loads((out / "sample.json").read_text())
    assert np.load(out / "samples.npz")["images"].shape == (4, 8, 8, 1) and "psnr" in record["superres"]  # decoded, scored in pixels
    base = run_folder(diffctl("train", *latent))
    cn = run_folder(diffctl("train", "task=controlnet", f"base={base}", *FAST))  # the base's latent space, found by itself
    state = load_checkpoint(list_checkpoints(cn / "checkpoints")[-1])
    assert state["data_shape"] == [4, 4, 4] and state["cond"]["shape"] == [1, 8, 8] and "latent" in state
    hint_convs = [k for k in state["model"] if k.startswith("hint.") and k.endswith(".weight")]
    assert len(hint_convs) == 4  # one more than a pixel ControlNet's: a stride-2 convolution halves the 8x8 edge map to the 4x4 latents
    args = ["num_samples=4", "steps=2", "control.image=[0,3]"]
    zero = run_folder(diffctl("sample", f"ckpt={cn}", "control.scale=0", *args))
    plain = run_folder(diffctl("sample", f"ckpt={base}", "num_samples=4", "steps=2"))
    assert np.array_equal(np.load(zero / "samples.npz")["images"], np.load(plain / "samples.npz")["images"])
    guided = json.loads((run_folder(diffctl("sample", f"ckpt={cn}", "guidance.scale=2", *args)) / "sample.json").read_text())
    assert "fidelity" in guided["control"] and guided["nfe"] == 4 and guided["guidance"]["scale"] == 2.0  # guided against the blank control
    assert_one_line_error(cli("train", "task=controlnet", f"base={base}", "latent.autoencoder=latest", *FAST), "train",
                          "task=controlnet works in its base run's space")


def test_a_folder_brings_its_own_controls(diffctl, cli, tmp_path):
    from PIL import Image

    root, ctrl = tmp_path / "imgs", tmp_path / "controls"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        (ctrl / c).mkdir(parents=True)
        for i in range(10):
            img = np.zeros((8, 8), np.uint8)
            img[:, i % 8] = 255
            Image.fromarray(img).save(root / c / f"{i}.png")
            mark = np.zeros((8, 8), np.uint8)
            mark[i % 8, :] = 255  # a control unrelated to the image: a row, where the image has a column
            Image.fromarray(mark).save(ctrl / c / f"{i}.png")
    data = ["dataset=folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.grayscale=true"]
    base = run_folder(diffctl("train", *data, *FAST))
    cn = run_folder(diffctl("train", "task=controlnet", f"base={base}", "control=mask", *data, f"dataset.controls={ctrl}", *FAST))
    out = run_folder(diffctl("sample", f"ckpt={cn}", "control.image=[1]", "num_samples=2", "steps=2"))  # the run's dataset, controls included
    assert (out / "control.png").exists()
    from diffctl.config import load_option
    from diffctl.control import ControlCond
    from diffctl.data import load_dataset

    cfg = load_option("dataset", "folder")
    cfg.root, cfg.image_size, cfg.grayscale, cfg.controls = str(root), 8, True, str(ctrl)
    folder = load_dataset(cfg)
    cond = ControlCond("mask", folder.shape, base="b.pt", own=folder)
    got = cond.draw(folder.train[:3], None, 0.0, torch.Generator(), index=torch.tensor([0, 1, 2]))
    assert torch.equal(got, (folder.train_controls[:3] > 0).float())  # the folder's rows, not masks made from the images' columns
    (ctrl / "b" / "9.png").unlink()
    assert_one_line_error(cli("train", "task=controlnet", f"base={base}", *data, f"dataset.controls={ctrl}", *FAST), "train",
                          "1 of the images have no control image at the same relative path")
    assert_one_line_error(cli("train", "dataset=mnist5k", "dataset.controls=x", *FAST), "train", "dataset.controls is for dataset=folder")
