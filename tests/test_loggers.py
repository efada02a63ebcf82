"""The held-out loss and the loggers besides metrics.jsonl: TensorBoard (read back with its own
EventAccumulator) and CSV, across a resume and a branch."""

import csv
import json

import pytest
import torch
from conftest import TINY_TRAIN, logged_losses, make_trainer, run_folder

from diffctl.core.schedules import make_alpha_bar


def test_the_heldout_loss_is_the_objective_on_a_fixed_test_batch_and_touches_no_training_draw(tmp_path):
    trainer = make_trainer(tmp_path / "a", "trainer.precision=fp32", "trainer.eval_batch=40", "schedule=linear")
    gen, cpu = trainer.gen.get_state(), torch.get_rng_state()
    got = trainer.heldout_loss()
    assert trainer.heldout_loss() == got  # the same batch, noise levels and noise every time
    assert torch.equal(trainer.gen.get_state(), gen) and torch.equal(torch.get_rng_state(), cpu)

    # recomputed here in DDPM's variables from the same draws: eps-prediction, L_simple
    g = torch.Generator().manual_seed(trainer.cfg.seed + 1)
    idx = torch.randperm(len(trainer.data.test), generator=g)[:40]
    ab = make_alpha_bar("linear", 1000)
    t = torch.randint(0, 1000, (40,), generator=g)
    eps = torch.randn((40, 1, 8, 8), generator=g)
    a = ab[t].float()[:, None, None, None]
    x0 = trainer.data.test[idx]
    with torch.no_grad():
        out = trainer.net.eval()(a.sqrt() * x0 + (1 - a).sqrt() * eps, t.float())
    assert got == pytest.approx((out - eps).pow(2).mean().item(), rel=1e-5)


def test_computing_the_heldout_loss_leaves_the_trajectory_unchanged(tmp_path):
    """With the held-out loss at every step, the training losses are those of a run without it."""
    run = lambda folder, every: make_trainer(tmp_path / folder, "trainer.steps=6", "trainer.log_every=1", f"trainer.eval_every={every}",
                                             "trainer.ckpt_every=0").fit()  # each trainer seeds the global RNG: build, then fit
    assert run("a", 1)["objective"] == json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])["heldout_loss"]
    run("b", 0)
    assert logged_losses(tmp_path / "a") == logged_losses(tmp_path / "b")


def test_eval_every_must_fall_on_log_lines(cli):
    from conftest import assert_one_line_error

    assert_one_line_error(cli("train", "trainer.log_every=50", "trainer.eval_every=75"), "train", "must be a multiple of trainer.log_every=50")


def test_tensorboard_and_csv_hold_the_runs_numbers_and_pictures_across_a_branch(diffctl):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny = [*TINY_TRAIN, "trainer.eval_every=1", "logger=[tensorboard,csv]"]
    run = run_folder(diffctl("train", *tiny))
    # a resume from the step-2 checkpoint with a new learning rate: steps 3-4 of the first branch are abandoned
    diffctl("train", f"resume={run / 'checkpoints' / 'step_00000002.pt'}", "optim.lr=0.001", "trainer.steps=5")
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [float(r["heldout_loss"]) for r in rows] == pytest.approx([r["heldout_loss"] for r in records])
    assert [int(r["branch"]) for r in rows] == [0, 0, 1, 1, 1]

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/heldout_loss", "train/lr", "train/grad_norm", "train/img_per_s"} <= set(tags["scalars"])
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(loss) == [1, 2, 3, 4, 5] and loss == pytest.approx({r["step"]: r["loss"] for r in records})  # the abandoned 3-4 purged
    grids = events.Images("samples")
    assert [e.step for e in grids][-1] == 5 and grids[-1].width > 0 and grids[-1].height > 0  # the grid under its title band
    assert "config" in "".join(tags["tensors"])
