"""What a new user trips over (issue 29): names that move ('latest', a run folder) are resolved once per run, and a
resume keeps what its run was trained on."""

import pytest
from conftest import assert_one_line_error, run_folder

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint

AE = ["task=autoencoder", "autoencoder.downsample=2", "trainer.steps=6", "trainer.batch_size=16", "trainer.sample_every=0",
      "trainer.log_every=6", "trainer.eval_every=0", "optim.warmup_steps=1"]
LATENT = ["model=unet_tiny", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.log_every=2", "trainer.eval_every=0",
          "optim.warmup_steps=1"]


def _last(run):
    return list_checkpoints(run / "checkpoints")[-1]


@pytest.mark.slow
def test_a_resume_keeps_the_autoencoder_latest_named_when_the_run_started(diffctl, cli):
    first = run_folder(diffctl("train", *AE))
    latent = run_folder(diffctl("train", "latent.autoencoder=latest", *LATENT, "trainer.steps=2"))
    before = load_checkpoint(_last(latent))
    assert before["references"]["latent.autoencoder"] == {"spec": "latest", "file": str(_last(first)), "sha256": before["latent"]["sha256"]}
    second = run_folder(diffctl("train", *AE, "seed=1"))  # now 'latest' names another autoencoder, with another scale
    resumed = diffctl("train", f"resume={latent}", "trainer.steps=4")
    after = load_checkpoint(_last(latent))
    assert after["step"] == 4 and after["latent"] == before["latent"]  # the same file, hash and scale
    assert after["references"] == before["references"]
    # naming the new autoencoder on resume is refused; so is an autoencoder file changed under the run
    assert_one_line_error(cli("train", f"resume={latent}", f"latent.autoencoder={second}", "trainer.steps=6"), "train",
                          f"it was trained with latent.autoencoder={_last(first)}, and latent.autoencoder={second} is now {_last(second)}")
    _last(first).write_bytes(_last(first).read_bytes() + b"\0")
    assert_one_line_error(cli("train", f"resume={latent}", "trainer.steps=6"), "train", "has changed since (SHA-256 mismatch)")
    assert "resumed from" in resumed.stdout + resumed.stderr


FAST = ["model=unet_tiny", "trainer.steps=2", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.num_grid=4", "trainer.sample_steps=2",
        "trainer.log_every=2", "trainer.eval_every=0", "optim.warmup_steps=1"]


def test_base_latest_is_the_newest_plain_diffusion_run_not_the_newest_run_that_samples(diffctl, cli):
    base = run_folder(diffctl("train", *FAST))
    code, out, err = cli("export", f"ckpt={base}", "format=diffusers")  # the refusal names what to change, nothing the preset sets
    assert_one_line_error((code, out, err), "export", "train with model=diffusers_unet; ")
    assert "sigma_data" not in err
    first = run_folder(diffctl("train", "task=controlnet", "base=latest", "control=mask", *FAST))
    # a ControlNet run samples (it is ckpt=latest now), but it is no base: base=latest still names the diffusion run
    second = run_folder(diffctl("train", "task=controlnet", "base=latest", "control=edges", *FAST))
    for run in (first, second):
        state = load_checkpoint(_last(run))
        assert state["cond"]["base"] == str(_last(base)) and state["references"]["base"]["spec"] == "latest"
    assert run_folder(diffctl("sample", "ckpt=latest", "steps=2", "num_samples=2", "control.image=0"))  # latest: the newest ControlNet


def test_the_common_noise_heldout_error_is_the_same_quantity_for_every_schedule(tmp_path):
    """The raw losses of schedule=linear and schedule=cosine average over different noise levels; heldout_x0_mse measures
    every run at the same 8 levels. A network that outputs zero eps has D(x0 + sigma z, sigma) = x0 + sigma z, so its x0
    error is sigma^2 |z|^2 / d whatever the schedule."""
    from conftest import make_trainer

    from diffctl.tasks import COMMON_SIGMAS

    got = {}
    for schedule in ("linear", "cosine"):
        trainer = make_trainer(tmp_path / schedule, f"schedule={schedule}", "model.prediction=eps")
        zero = trainer.task.zero_net()
        got[schedule] = trainer.heldout_loss(zero, common=True)
        z = trainer._heldout_batch["noise"].double()
        sigma = COMMON_SIGMAS.repeat(len(z) // 8 + 1)[:len(z)]
        expected = (sigma**2 * z.pow(2).flatten(1).mean(1)).mean().item()
        assert got[schedule] == pytest.approx(expected, rel=1e-5)
    assert got["linear"] == pytest.approx(got["cosine"], rel=1e-6)


def test_compare_says_when_raw_losses_are_not_comparable(tmp_path):
    from diffctl.runs import objective_differences

    def run(name, schedule, lr):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(f"task: diffusion\nschedule: {{name: {schedule}, timesteps: 1000}}\nloss: {{name: simple}}\n"
                                            f"model: {{prediction: eps, sigma_data: 1.0}}\noptim: {{lr: {lr}}}\n")
        return folder

    a, b, c = run("a", "linear", 0.002), run("b", "cosine", 0.002), run("c", "linear", 0.0005)
    assert objective_differences([a, b]) == ["schedule.name"]
    assert objective_differences([a, c]) == []  # a learning rate changes the run, not what its loss means
