"""The real CLI in a temp output root: in this process (the diffctl fixture), in a subprocess where that is the point."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, assert_one_line_error, run_folder


def test_top_level_help_lists_the_commands(diffctl):
    out = diffctl("--help").stdout
    for cmd in ("train", "sample", "eval", "inspect-schedule", "export"):
        assert cmd in out
    assert "diffctl 0." in diffctl("--version").stdout


def test_train_help_lists_groups_and_options(diffctl):
    out = diffctl("train", "--help").stdout
    assert "dataset: celeba, cifar10, digits, digits_gmm, fashion_mnist, folder, gmm, gmm1d, mnist, mnist5k, moons, swiss_roll" in out
    assert "experiment: ddpm_cifar10, edm_cifar10, iddpm_cifar10" in out
    assert "model: diffusers_unet, mlp, unet_base, unet_small, unet_tiny" in out
    assert "schedule: cosine, edm, linear, scaled_linear, sigmoid" in out
    assert "loss: edm, min_snr, simple" in out
    assert "logger: csv, none, tensorboard" in out
    assert "sampler: ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral, heun, unipc" in out
    assert "trainer: default" in out and "optim: adamw" in out and "\ntrainer:\n  steps: 2500" in out
    assert "schema" not in out  # schemas are not user-facing options
    # --help skips Hydra's listing of every group on the search path, which its template does not show; --hydra-help keeps it
    assert re.search(r"^hydra/launcher: .*basic.*local_parallel", diffctl("train", "--hydra-help").stdout, re.M)


def test_hydra_mode_set_by_an_override_still_makes_a_sweep(diffctl):
    """diffctl skips Hydra's first composition, which only reads hydra.mode (cli._hydra_shortcuts): a mode an override
    names is still honoured, and no packaged config sets one (where the shortcut would hide it)."""
    import yaml

    diffctl("inspect-schedule", "hydra.mode=MULTIRUN", "schedule=linear,cosine", "rows=2")
    assert len(list(diffctl.root.rglob("multirun.yaml"))) == 1 and len(list(diffctl.root.rglob("schedule.png"))) == 2

    def keys(node):
        return {k for k, v in node.items() for k in (k, *keys(v))} if isinstance(node, dict) else set()

    configs = Path(__file__).parent.parent / "configs"
    assert not [f for f in configs.rglob("*.yaml") if "mode" in keys(yaml.safe_load(f.read_text()) or {})]


def test_hydra_reads_the_mode_only_where_an_override_can_set_it(cli, monkeypatch):
    from hydra._internal.hydra import Hydra

    calls = []
    monkeypatch.setattr(Hydra, "get_mode", lambda self, config_name, overrides: calls.append(overrides))
    for args, composed in ((["model=unet_tiny"], False), (["hydra.mode=RUN"], True), (["-cd", "."], True)):
        calls.clear()
        cli("train", *args, "trainer.steps=0")
        assert bool(calls) is composed, args


def help_groups(text: str) -> list[str]:
    """The config groups a --help lists."""
    section = text.split("== Configuration groups ==\n", 1)[1].split("== Config ==", 1)[0]
    return [line.split(":", 1)[0] for line in section.splitlines()[1:] if ":" in line]


@pytest.mark.parametrize("command,groups", [
    ("sample", ["dataset", "paths", "sampler", "schedule"]),
    ("eval", ["dataset", "paths", "sampler", "schedule"]),
    ("export", ["paths"]),
])
def test_each_command_help_lists_only_the_groups_it_composes(diffctl, command, groups):
    out = diffctl(command, "--help").stdout
    assert help_groups(out) == groups
    assert "trainer" not in out and "optim" not in out and "experiment" not in out and "\nloss:" not in out
    assert "diffctl train" not in out  # the footer's examples: this command's own
    if command == "sample":
        assert "sampler: ddim, ddpm" in out and "\nsampler:\n  name: ddim" in out and "diffctl sample ckpt=latest" in out


def test_help_piped_into_a_reader_that_stops_early_is_not_an_error(tmp_path):
    # `diffctl sample --help | head -1`: head closes the pipe after one line; before, the rest of the help failed with
    # "diffctl sample: error: [Errno 32] Broken pipe" on stderr
    proc = subprocess.run(f"{sys.executable} -m diffctl sample --help | head -1", shell=True, capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env={**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs")})
    assert proc.stdout.startswith("diffctl sample") and proc.stderr == "", proc.stderr


def test_help_shows_the_config_its_overrides_compose(diffctl):
    for args in (["experiment=ddpm_cifar10", "--help"], ["--help", "experiment=ddpm_cifar10"]):  # overrides before or after
        out = diffctl("train", *args).stdout
        assert "\ntrainer:\n  steps: 800000" in out and "experiment" in help_groups(out), out
    refused = diffctl("train", "--help", "schedule=nope", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "diffctl train: error: In 'train': Could not find 'schedule/nope'; available options in 'schedule': "
        + ", ".join(sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "schedule").glob("*.yaml")))]


def test_cfg_job_prints_the_composed_config(diffctl):
    out = diffctl("train", "schedule=cosine", "trainer.steps=7", "--cfg", "job").stdout
    assert "name: cosine" in out and "steps: 7" in out and "hydra:" not in out


@pytest.mark.slow
def test_train_sample_eval_inspect_end_to_end(diffctl):
    # T = 100: eval's default metrics include the variational bound, a network call on the whole test split per term
    # (at T = 1,000, 117 s of this test's 166 s on an AVX2-only core); its values are test_likelihood's
    train = run_folder(diffctl("train", *TINY_TRAIN, "schedule.timesteps=100"))
    assert train.parent.parent == diffctl.root / "train"  # outputs/train/<date>/<time>
    assert (train / "config.yaml").exists() and (train / "train.log").exists()
    assert [p.name for p in sorted((train / "checkpoints").iterdir())] == ["step_00000002.pt", "step_00000004.pt"]
    assert sorted(p.name for p in (train / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    records = [json.loads(l) for l in (train / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in records)

    sample = run_folder(diffctl("sample", "ckpt=latest", "steps=5", "num_samples=6", "batch_size=4"))
    refused = diffctl("sample", "ckpt=latest", "classes=[3]", check=False)  # this model is unconditional
    assert refused.returncode == 2 and "classes= needs a class-conditional model" in refused.stderr
    info = json.loads((sample / "sample.json").read_text())
    assert info["nfe"] == 5 and info["timesteps"][0] == 99 and info["checkpoint"].endswith("step_00000004.pt")
    images = np.load(sample / "samples.npz")["images"]
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    assert (sample / "grid.png").stat().st_size > 0

    # image i is the same whatever the batch size, from a run folder or a file
    again = run_folder(diffctl("sample", f"ckpt={train}", "steps=5", "num_samples=6", "batch_size=6"))
    assert np.array_equal(np.load(again / "samples.npz")["images"], images)

    ev_proc = diffctl("eval", f"ckpt={train / 'checkpoints' / 'step_00000004.pt'}", "steps=2", "num_samples=300")
    ev = run_folder(ev_proc)
    report = json.loads((ev / "metrics.json").read_text())
    assert report["metrics"]["test_loss"]["value"] > 0
    fd = report["metrics"]["fd_ref"]
    assert fd["value"] > fd["floor"] > 0 and fd["n"] == 300 and fd["reference"]["test_accuracy"] > 0.9
    assert set(report["skipped"]) == {"swd", "mmd", "energy", "logp_true", "fid", "kid", "is", "cond_acc"}
    assert report["skipped"]["swd"] == "needs 2-D point data" and "no Inception weights on disk" in report["skipped"]["fid"]
    prdc = report["metrics"]["prdc_ref"]
    assert 0 <= prdc["precision"] <= 1 and 0 <= prdc["coverage"] <= 1 and prdc["floor_all"]["recall"] > 0.5
    for name in ("fd_ref", "kid_ref"):  # smooth statistics of 300 distinct samples: jackknife error bars, never exactly 0
        assert report["metrics"][name]["err"] > 0 and report["metrics"][name]["floor_err"] > 0, name
    # a k-NN rate of exactly 0 or 1 (a 4-step model's precision can be 0) has a bootstrap error of 0: every resample agrees
    assert prdc["err"] > 0 or prdc["value"] in (0.0, 1.0), prdc
    assert prdc["floor_err"] > 0
    # likelihoods of an untrained-ish model: worse than uniform over the 17 levels is possible, but finite and positive
    assert report["metrics"]["vlb"]["value"] > 0 and report["metrics"]["ode_nll"]["unit"] == "bits/dim"
    assert np.isfinite(report["metrics"]["ode_nll"]["value"])
    assert "no Inception weights on disk" in ev_proc.stdout and "fd_ref" in ev_proc.stdout
    assert (ev / "real_vs_generated.png").exists()

    insp = diffctl("inspect-schedule", "schedule=cosine")
    folder = run_folder(insp)
    assert "alpha_bar_t" in insp.stdout and (folder / "schedule.png").exists() and (folder / "forward.png").exists()
    facts = json.loads((folder / "schedule.json").read_text())["schedules"]["cosine"]
    assert facts["terminal_snr"] < 1e-6 and len(facts["rows"]) == 10

    listing = diffctl("runs", "--output-root", str(diffctl.root)).stdout
    assert listing.count("train") >= 1 and listing.count("sample") >= 2 and ".hydra" not in listing


@pytest.mark.slow
def test_toy2d_train_sample_eval(diffctl):
    common = ["dataset=gmm", "dataset.num_train=500", "dataset.num_test=200"]
    diffctl("train", "model=mlp", *common, *TINY_TRAIN[1:])
    sample = run_folder(diffctl("sample", "steps=4", "num_samples=10"))
    assert np.load(sample / "samples.npz")["x"].shape == (10, 2)
    ev = run_folder(diffctl("eval", "steps=4", "num_samples=200"))
    report = json.loads((ev / "metrics.json").read_text())
    assert report["metrics"]["swd"]["value"] > 0 and "fd_ref" in report["skipped"] and "vlb" in report["skipped"]
    for name in ("swd", "mmd", "energy", "logp_true"):
        assert report["metrics"][name]["n"] == 200 and "floor" in report["metrics"][name] and report["metrics"][name]["err"] > 0
    nll = report["metrics"]["ode_nll"]
    assert nll["trace"] == "exact" and nll["unit"] == "nats per item" and np.isfinite(nll["value"]) and "floor" in nll


@pytest.mark.slow
def test_multirun_sweep_writes_one_folder_per_job(diffctl, cache_dir):
    proc = diffctl("train", "-m", "schedule=linear,cosine", *TINY_TRAIN[:3], "trainer.sample_every=0", "trainer.ckpt_every=10")
    jobs = sorted(diffctl.root.glob("train/multirun/*/*/*/config.yaml"))
    assert len(jobs) == 2, proc.stdout
    assert {"linear", "cosine"} == {j.read_text().split("schedule:\n  name: ")[1].split("\n")[0] for j in jobs}
    for j in jobs:
        assert (j.parent / "checkpoints" / "step_00000004.pt").exists()
    # scripts/sweep_table.py evaluates each job and writes one table
    sweep = jobs[0].parent.parent
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(diffctl.root)}
    table = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "scripts" / "sweep_table.py"), str(sweep), "num_samples=300",
                            "steps=2", f"paths.cache_dir={cache_dir}"], capture_output=True, text=True, env=env, timeout=600)
    assert table.returncode == 0, table.stderr
    rows = json.loads((sweep / "sweep_table.json").read_text())
    assert [r["job"] for r in rows] == ["0", "1"] and all(r["fd_ref"] > 0 and r["test_loss_eps"] > 0 for r in rows)
    assert "schedule=linear" in rows[0]["overrides"] and (sweep / "sweep_table.md").exists()


@pytest.mark.slow
def test_resume_continues_from_the_newest_checkpoint(diffctl, trained):
    first = trained("pixel")
    state4 = torch.load(first / "checkpoints" / "step_00000004.pt", weights_only=True)
    # the run's own overrides (model=unet_tiny, batch 8, ...) are reused: only the new step count is given
    proc = diffctl("train", f"resume={first}", "trainer.steps=6")
    assert run_folder(proc) == first and "resumed from" in proc.stdout + proc.stderr
    steps = [json.loads(l)["step"] for l in (first / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    state6 = torch.load(first / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert state6["step"] == 6 and state6["ema_updates"] == 6 and state6["config"]["model"]["channels"] == 16
    assert state6["optimizer"]["state"][0]["step"].item() == 6  # optimizer state carried over
    assert not torch.equal(state4["model"]["stem.weight"], state6["model"]["stem.weight"])

    # from an older checkpoint file: a new branch; the old one's steps 5 and 6 are moved aside, not repeated
    diffctl("train", f"resume={first / 'checkpoints' / 'step_00000004.pt'}", "trainer.steps=6")
    records = [json.loads(l) for l in (first / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["branch"]) for r in records if "event" not in r] == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1)]
    (abandoned,) = (first / "abandoned").iterdir()
    assert [p.name for p in (abandoned / "checkpoints").iterdir()] == ["step_00000006.pt"]

    # changing what defines the run is refused with the differences named
    bad = diffctl("train", f"resume={first}", "model=unet_small", check=False)
    assert bad.returncode == 2 and "model.channels=16 (now 32)" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["train", "schedule=nope"], "available options in 'schedule': cosine, edm, linear, scaled_linear, sigmoid"),
    (["train", "model=unet_huge"], "available options in 'model': diffusers_unet, mlp, unet_base, unet_small, unet_tiny"),
    (["train", "trainer.steps=abc"], "trainer.steps=abc"),
    (["train", "trainer.stepz=3"], "unknown key 'trainer.stepz'; did you mean trainer.steps?"),  # never Hydra's advice to add it with +
    (["train", "model.chanels=3"], "unknown key 'model.chanels'; did you mean model.channels or model.channel_mult?"),
    (["sample", "zzzqq=1"], "unknown key 'zzzqq'; SampleConfig has: sampler, dataset, schedule, paths, ckpt, steps,"),
    (["train", "+model.foo=1"], "unknown key model.foo"),
    (["train", "trainer.precision=fp8"], "choose from: auto, bf16, fp16, fp32"),
    (["sample", "ckpt=/no/such/run"], "ckpt=/no/such/run: no such file or folder"),
    (["sample", "ckpt=latest"], "no train run with a checkpoint"),
    (["eval", "metrics=[fd_ref,nope]"], "unknown metric(s) ['nope']"),
    (["eval", "ckpt=oracle", "dataset=digits_gmm", "inception_weights=/nonexistent.pth"], "inception_weights=/nonexistent.pth: no such file"),
    (["train", "resume=/no/such/run"], "resume=/no/such/run: no such run folder"),
    (["sample", "model=unet_small"], "this command has no 'model' config group"),
    (["sample", "ckpt=oracle"], "ckpt=oracle needs dataset=gmm or dataset=digits_gmm"),
    (["sample", "ckpt=oracle", "dataset=moons"], "dataset=moons has no closed-form denoiser"),
    (["train", "model=oracle"], "Could not find 'model/oracle'; available options in 'model': diffusers_unet, mlp, unet_base"),
    (["eval", "ckpt=oracle", "dataset=gmm", "samplers=[heun,nope]"], "samplers: unknown sampler 'nope'"),
    (["eval", "ckpt=oracle", "dataset=gmm", "steps=[5,0]"], "steps=[5, 0] is out of range"),
    (["sample", "batch_size=0"], "batch_size=0 is out of range; it must be >= 1"),
    (["sample", "num_samples=-4"], "num_samples=-4 is out of range"),
    (["train", "trainer.batch_size=-1"], "trainer.batch_size=-1 is out of range"),
    (["train", "trainer.steps=0"], "trainer.steps=0 is out of range"),
    (["sample", "sampler.eta=-1"], "sampler.eta=-1"),
    (["sample", "sampler=unipc", "sampler.order=7"], "sampler.order=7 is out of range; it must be >= 1 and <= 3"),
    (["train", "optim.lr=-1"], "optim.lr=-1"),
])
def test_bad_inputs_are_one_line_errors(cli, args, message):
    assert_one_line_error(cli(*args), args[0], message)


def test_corrupt_checkpoint_is_a_clear_error(diffctl, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    proc = diffctl("sample", f"ckpt={bad}", check=False)
    assert proc.returncode == 2 and "not a valid diffctl checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_schedule_compares_and_reports_visits(diffctl):
    from PIL import Image

    proc = diffctl("inspect-schedule", "compare=[linear,cosine,sigmoid]", "steps=10", "sampler.spacing=trailing")
    folder = run_folder(proc)
    report = json.loads((folder / "schedule.json").read_text())
    assert list(report["schedules"]) == ["linear", "cosine", "sigmoid"]
    assert report["schedules"]["linear"]["visits"] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    crossings = {n: r["snr_crosses_1_at_t"] for n, r in report["schedules"].items()}
    assert crossings["linear"] < crossings["cosine"]  # the cosine schedule destroys information later
    assert "SNR < 1 from t =" in proc.stdout and "visits t = [999, 899" in proc.stdout
    strip = Image.open(folder / "forward.png")
    assert strip.width > strip.height > 300  # 3 rows (schedules) of 8 columns (timesteps)
    ts = report["strip_timesteps"]  # 0-based like the visited timesteps: from the clean image to the last step, increasing,
    assert len(ts) == 8 and ts[0] == 0 and ts[-1] == 999 and ts == sorted(set(ts))  # and on both sides of each
    assert all(any(t < c for t in ts) and any(t > c for t in ts) for c in crossings.values())  # schedule's SNR = 1
    bad = diffctl("inspect-schedule", "compare=[linear,nope]", check=False)
    assert bad.returncode == 2 and "compare: unknown schedule 'nope'" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["schedule=cosine", "model.prediction=v", "loss=min_snr", "schedule.zero_terminal_snr=true"],
    ["schedule=edm", "model.prediction=x0", "loss=edm", "sampler.spacing=karras"],
    ["schedule=sigmoid", "model.prediction=eps", "sampler=ddpm", "sampler.spacing=leading"],
])
def test_schedules_targets_and_losses_train_and_sample(diffctl, overrides):
    train = run_folder(diffctl("train", *TINY_TRAIN, "trainer.sample_every=0", *overrides))
    sample = run_folder(diffctl("sample", f"ckpt={train}", "steps=4", "num_samples=4", *[o for o in overrides if o.startswith("sampler")]))
    info = json.loads((sample / "sample.json").read_text())
    assert info["nfe"] == 4 and len(info["timesteps"]) == 4
    assert np.isfinite(np.load(sample / "samples.npz")["images"]).all()


def test_eval_with_fewer_than_eight_samples_writes_the_comparison(diffctl):
    folder = run_folder(diffctl("eval", "ckpt=oracle", "dataset=digits_gmm", "metrics=[logp_true]", "num_samples=5", "steps=3"))
    assert (folder / "real_vs_generated.png").exists()
    assert json.loads((folder / "metrics.json").read_text())["metrics"]["logp_true"]["n"] == 5


def test_oracle_samples_without_a_checkpoint(diffctl):
    folder = run_folder(diffctl("sample", "ckpt=oracle", "dataset=gmm", "sampler=heun", "steps=20", "num_samples=100"))
    info = json.loads((folder / "sample.json").read_text())
    assert info["nfe"] == 39 and info["model"] == "oracle" and info["sampler"] == "heun"
    x = np.load(folder / "samples.npz")["x"]
    radius = np.linalg.norm(x, axis=1)
    assert x.shape == (100, 2) and np.abs(np.median(radius) - 2.0) < 0.1  # the 8 modes sit on a circle of radius 2


@pytest.mark.slow
def test_eval_quality_vs_nfe_grid_on_the_image_oracle(diffctl):
    folder = run_folder(diffctl("eval", "ckpt=oracle", "dataset=digits_gmm", "samplers=[ddim,heun]", "steps=[2,8]", "num_samples=300"))
    report = json.loads((folder / "metrics.json").read_text())
    grid = {(r["sampler"], r["steps"]): r for r in report["grid"]}
    assert set(grid) == {("ddim", 2), ("ddim", 8), ("heun", 2), ("heun", 8)}
    assert grid[("heun", 8)]["nfe"] == 15 and grid[("ddim", 8)]["nfe"] == 8
    fd = {k: r["metrics"]["fd_ref"]["value"] for k, r in grid.items()}
    assert fd[("ddim", 8)] < fd[("ddim", 2)] and fd[("heun", 8)] < fd[("heun", 2)]
    assert "test_loss" in report["skipped"]
    assert (folder / "quality_vs_nfe.png").exists() and "| heun | 8 | 15 |" in (folder / "quality_vs_nfe.md").read_text()


@pytest.mark.slow
def test_eval_vlb_in_bits_per_dim(diffctl):
    train = run_folder(diffctl("train", *TINY_TRAIN, "trainer.sample_every=0", "schedule.timesteps=40"))
    folder = run_folder(diffctl("eval", f"ckpt={train}", "metrics=[vlb]"))
    v = json.loads((folder / "metrics.json").read_text())["metrics"]["vlb"]
    assert v["n"] == 300 and v["levels"] == 17 and v["uniform_bpd"] == pytest.approx(np.log2(17))
    assert 0 < v["decoder_bpd"] < v["value"] and v["prior_bpd"] >= 0 and v["stderr"] > 0


@pytest.mark.slow
def test_class_conditional_training_guided_sampling_and_inpainting(diffctl, cli):
    train = run_folder(diffctl("train", *TINY_TRAIN, "trainer.sample_every=0", "model.num_classes=10"))
    guided = run_folder(diffctl("sample", f"ckpt={train}", "steps=4", "num_samples=6", "classes=[3,7]", "guidance.scale=2"))
    info = json.loads((guided / "sample.json").read_text())
    assert info["labels"] == [3, 7, 3, 7, 3, 7] and info["nfe"] == 8 and info["guidance"] == {"scale": 2.0, "rescale": 0.0}
    ev = run_folder(diffctl("eval", f"ckpt={train}", "steps=2", "num_samples=300", "classes=all", "guidance.scale=1.5",
                            "metrics=[cond_acc,fd_ref]"))
    acc = json.loads((ev / "metrics.json").read_text())["metrics"]["cond_acc"]
    assert 0 <= acc["value"] <= 1 and acc["err"] > 0 and acc["n"] == 300 and sorted(map(int, acc["per_class"])) == list(range(10)) and acc["floor"] > 0.9

    inp = diffctl("sample", f"ckpt={train}", "steps=4", "num_samples=4", "inpaint.image=5", "inpaint.mask=center", "inpaint.resample=2")
    folder = run_folder(inp)
    assert (folder / "inpaint.png").exists() and "known pixels changed by at most 0" in inp.stdout + inp.stderr
    record = json.loads((folder / "sample.json").read_text())  # the settings and the picture, neither hiding the other
    assert record["inpaint"] == {"image": 5, "mask": "center", "resample": 2} and record["inpaint_grid"] == str(folder / "inpaint.png")
    images = np.load(folder / "samples.npz")["images"][..., 0].astype(int)
    assert (images[:, :2, :] == images[0, :2, :]).all()  # the rows outside the centre hole are the same known pixels in every sample

    for args, message in [
        (["guidance.scale=3"], "guidance.* steers towards classes"),
        (["classes=[3,12]"], "class indices in [0, 9]"),
        (["inpaint.image=0"], "needs both inpaint.image"),
        (["inpaint.image=0", "inpaint.mask=diagonal"], "inpaint.mask=diagonal"),
        (["inpaint.image=9999", "inpaint.mask=left"], "the test split has images 0..299"),
        (["inpaint.resample=3"], "inpaint.resample needs inpaint.image"),
    ]:
        assert_one_line_error(cli("sample", "ckpt=oracle", "dataset=digits_gmm", *args), "sample", message)
    assert_one_line_error(cli("train", *TINY_TRAIN, "model.num_classes=4"), "train", "model.num_classes=4, but dataset=digits has 10 classes")


@pytest.mark.slow
def test_classifier_training_and_classifier_guidance(diffctl, cli):
    diffusion = run_folder(diffctl("train", *TINY_TRAIN, "trainer.sample_every=0"))
    clf = run_folder(diffctl("train", *TINY_TRAIN, "trainer.sample_every=0", "task=classifier"))
    assert (clf / "samples" / "accuracy_00000004.png").exists() and not (clf / "samples" / "step_00000004.png").exists()
    records = [json.loads(l) for l in (clf / "metrics.jsonl").read_text().splitlines()]
    acc = [r["test_accuracy"] for r in records if "test_accuracy" in r][-1]
    assert list(acc) == ["0", "100", "200", "300", "400", "500", "599", "699", "799", "899", "999"] and all(0 <= a <= 1 for a in acc.values())
    # latest: the newest diffusion run for ckpt=, the newest classifier run for guidance.classifier=
    out = run_folder(diffctl("sample", "ckpt=latest", "steps=3", "num_samples=4", "classes=[3]", "guidance.classifier=latest",
                             "guidance.classifier_scale=2"))
    info = json.loads((out / "sample.json").read_text())
    assert info["checkpoint"].startswith(str(diffusion)) and info["guidance"]["classifier"].startswith(str(clf))
    assert info["guidance"]["classifier_scale"] == 2 and info["labels"] == [3] * 4 and info["nfe"] == 3 and info["classifier_nfe"] == 3
    assert "train (classifier)" in diffctl("runs", "--output-root", str(diffctl.root)).stdout
    for command, args, message in [
        ("sample", [f"ckpt={clf}"], "is a noise-aware classifier (task=classifier): use it as guidance.classifier="),
        ("sample", ["classes=all", f"guidance.classifier={diffusion}"], "is a diffusion model, not a classifier"),
        ("sample", ["classes=all", "guidance.classifier=latest", "guidance.scale=2"], "steer this unconditional one with guidance.classifier_scale"),
        ("sample", ["guidance.classifier=latest"], "guidance.* steers towards classes"),
        ("sample", ["classes=all"], "or a classifier (guidance.classifier="),
        ("sample", ["classes=all", "guidance.classifier=oracle"], "guidance.classifier=oracle is the exact posterior of a mixture"),
        ("sample", ["classes=all", "guidance.classifier=latest", "guidance.classifier_scale=-1"], "guidance.classifier_scale=-1"),
        ("train", ["task=classifier", "model.num_classes=10"], "drop model.num_classes"),
        ("train", ["task=classifier", "dataset=swiss_roll", "model=mlp"], "dataset=swiss_roll has no labels"),
        ("train", ["task=regression"], "task='regression' is not allowed"),
    ]:
        assert_one_line_error(cli(command, *(TINY_TRAIN if command == "train" else ["steps=2", "num_samples=2"]), *args), command, message)


@pytest.mark.slow
def test_classifier_guidance_on_the_2d_oracle(diffctl):
    from diffctl.data.toy2d import gmm_params

    means = gmm_params()[0]
    nearest = lambda x: torch.cdist(torch.as_tensor(x).double(), means.double()).argmin(1)
    # the exact posterior: the unconditional oracle (w = 0) guided at s = 1 is the conditional oracle (w = 1)
    common = ["ckpt=oracle", "dataset=gmm", "steps=20", "num_samples=100", "classes=[2,5]"]
    exact = run_folder(diffctl("sample", *common, "guidance.scale=0", "guidance.classifier=oracle"))
    conditional = run_folder(diffctl("sample", *common))
    x, ref = (np.load(f / "samples.npz")["x"] for f in (exact, conditional))
    assert np.abs(x - ref).max() < 1e-3 and (nearest(x) == torch.tensor([2, 5] * 50)).all()
    # a learned classifier (300 steps) steers the unconditional oracle towards the requested component
    clf = run_folder(diffctl("train", "task=classifier", "dataset=gmm", "model=mlp", "trainer.steps=300", "trainer.sample_every=0"))
    for s, low in ((0, 0.0), (2, 0.6)):
        out = run_folder(diffctl("sample", *common[:4], "classes=[2]", "guidance.scale=0", f"guidance.classifier={clf}",
                                 f"guidance.classifier_scale={s}"))
        hit = (nearest(np.load(out / "samples.npz")["x"]) == 2).double().mean().item()
        assert hit >= low and (s > 0 or hit < 0.4), (s, hit)


@pytest.mark.slow
def test_local_parallel_sweep_through_the_joblib_launcher(diffctl):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # in a process of its own: after a joblib sweep in a process, its later compositions fail to build the model schema's
    # list defaults ("Invalid value assigned: _MISSING_TYPE"), which would fail the tests that run after this one in-process
    proc = diffctl("train", "-m", "hydra/launcher=local_parallel", "schedule=linear,cosine", *TINY_TRAIN, "trainer.sample_every=0",
                   subprocess=True)
    sweep = next((diffctl.root / "train" / "multirun").glob("*/*"))
    assert (sweep / "multirun.yaml").exists() and sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, schedule in (("0", "linear"), ("1", "cosine")):
        assert (sweep / job / "checkpoints" / "step_00000004.pt").exists()
        assert f"name: {schedule}" in (sweep / job / "config.yaml").read_text()
        cores = os.cpu_count()  # each of the 2 jobs at once gets half the cores, not torch's default of all of them
        assert f"{max(1, cores // 2)} CPU thread" in (sweep / job / "train.log").read_text()
        assert f"(the {cores} cores shared by 2 parallel sweep jobs)" in (sweep / job / "train.log").read_text()
    assert "Joblib" in proc.stdout + proc.stderr


def test_threads_sets_torchs_cpu_threads_and_the_log_says_so(diffctl):
    # a child process (torch's default: one thread per core) asked for 1 thread; the log reads the value back from torch
    proc = diffctl("sample", "ckpt=oracle", "dataset=gmm", "num_samples=4", "steps=2", "threads=1")
    assert "1 CPU thread (threads=1)" in (run_folder(proc) / "sample.log").read_text()
    proc = diffctl("sample", "ckpt=oracle", "dataset=gmm", "num_samples=4", "steps=2")
    assert "(torch's default; set threads=N when other work shares the machine)" in (run_folder(proc) / "sample.log").read_text()


@pytest.mark.slow
def test_optuna_sweeper_preset_minimises_the_heldout_loss(diffctl):
    import yaml

    diffctl("train", "-m", "hydra/sweeper=optuna_lr", "hydra.sweeper.n_trials=3", *TINY_TRAIN, "trainer.sample_every=0")
    sweep = next((diffctl.root / "train" / "multirun").glob("*/*"))
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    finals = {}  # each trial's objective: the held-out loss of its last metrics line
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        records = [json.loads(l) for l in (job / "metrics.jsonl").read_text().splitlines()]
        finals[job.name] = records[-1]["heldout_loss"]
    assert len(finals) == 3 and len(set(finals.values())) == 3  # three trials with different learning rates
    assert best["best_value"] == pytest.approx(min(finals.values()), rel=1e-9)
    winner = min(finals, key=finals.get)
    assert yaml.safe_load((sweep / winner / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(best["best_params"]["optim.lr"])


def test_a_preset_whose_plugin_is_missing_names_the_extra_to_install(cli):
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None:
        pytest.skip("hydra-submitit-launcher is installed here")
    assert_one_line_error(cli("train", "-m", "hydra/launcher=slurm", "trainer.steps=2"), "train",
                          "Could not load 'hydra/launcher/submitit_slurm'; its Hydra plugin is not installed: pip install 'diffctl[slurm]'")


def test_a_file_that_is_not_a_checkpoint_gets_a_whole_sentence(cli, tmp_path):
    """torch's long weights-only message was cut mid-word ("... Re-running `torch.)"): the error keeps its first sentence."""
    (tmp_path / "notes.pt").write_text("# my notes\n\nnot a checkpoint\n")
    code, out, err = cli("sample", f"ckpt={tmp_path / 'notes.pt'}")
    assert_one_line_error((code, out, err), "sample", "not a valid diffctl checkpoint")
    line = err.strip()
    assert line.endswith((")", "checkpoint")) and "Re-running" not in line and "`" not in line, line
