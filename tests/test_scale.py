"""Scaling out: torchrun + DDP over gloo against one process, torch.compile and channels_last, the bench
script, and launcher plugins that cannot launch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL
from conftest import logged_losses as _losses
from conftest import make_trainer as _trainer

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_trajectory_and_resume(tmp_path, diffctl):
    # torchrun with 2 CPU processes and global batch 8 (4 each, in 2 accumulated micro-batches of 2: DDP's no_sync),
    # stopped after 3 steps and resumed to 6, against one process with batch 8 for 6 steps (constant LR after warm-up,
    # so the schedule does not depend on the total)
    args = [*SMALL, "trainer.log_every=1", "trainer.ckpt_every=0", "trainer.precision=fp32", "model.num_classes=10", "optim.decay=constant"]
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffctl", "train"]
    diffctl("train", *args, "trainer.steps=6", f"hydra.run.dir={tmp_path / 'one'}")  # the one process: in this one
    two = subprocess.run([*torchrun, *args, "trainer.accumulate=2", "trainer.steps=3"], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    folders = [p.parent for p in (tmp_path / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]
    assert len(folders) == 1 and two.stdout.count("run folder:") == 1  # one run folder, written by rank 0 only
    run = folders[0]
    resumed = subprocess.run([*torchrun, f"resume={run}", "trainer.steps=6"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len([p for p in (tmp_path / "outputs").rglob("config.yaml") if p.parent.name != ".hydra"]) == 1
    a, b = _losses(tmp_path / "one"), _losses(run)
    assert [r[0] for r in a] == [r[0] for r in b] == [1, 2, 3, 4, 5, 6]
    assert all(abs(x[1] - y[1]) < 1e-5 and x[2] == y[2] for x, y in zip(a, b)), (a, b)
    sa, sb = (load_checkpoint(d / "checkpoints" / "step_00000006.pt") for d in (tmp_path / "one", run))
    for key in ("model", "ema"):
        assert all(torch.allclose(sa[key][k], sb[key][k], atol=1e-5) for k in sa[key]), key
    assert (run / "samples" / "step_00000006.png").exists()


@pytest.mark.slow
def test_two_gloo_processes_streaming_their_shares_follow_one_process_in_memory(tmp_path, diffctl):
    # each rank's DataLoader reads only its half of the global batch from the files; the run follows one process that
    # holds the folder in memory
    from test_stream import digit_folder, folder_opts

    args = [*SMALL, *folder_opts(digit_folder(tmp_path / "imgs"), "trainer.steps=4", "optim.decay=constant")]
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    diffctl("train", *args, "dataset.in_memory=true", f"hydra.run.dir={tmp_path / 'one'}")  # the one process: in this one
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffctl", "train", *args,
                          "dataset.in_memory=false", "dataset.workers=1", f"hydra.run.dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "streamed from its files by 1 DataLoader workers" in two.stdout + two.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r[0] for r in a] == [r[0] for r in b] == [1, 2, 3, 4]
    assert all(abs(x[1] - y[1]) < 1e-5 for x, y in zip(a, b)), (a, b)
    sa, sb = (load_checkpoint(d / "checkpoints" / "step_00000004.pt") for d in (tmp_path / "one", tmp_path / "two"))
    assert all(torch.allclose(sa["ema"][k], sb["ema"][k], atol=1e-5) for k in sa["ema"])


@pytest.mark.slow  # a torchrun process tree (7 s); the two-process tests beside it take the same path further
def test_torchrun_with_one_process_takes_the_distributed_path(tmp_path):
    # world size 1 under torchrun: a process group (gloo here, NCCL on CUDA: tests/test_cuda.py) and DDP, as for N processes
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "diffctl", "train", *SMALL,
                           "trainer.steps=2", "trainer.log_every=1", "trainer.ckpt_every=0"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "x 1 processes (DDP, gloo, global batch 8)" in proc.stdout + proc.stderr


def test_compile_and_channels_last_train_the_same_model(tmp_path, monkeypatch):
    # torch.compile with dynamo's eager backend (the real inductor backend needs a minute of compilation on CPU):
    # the plumbing is the same, and checkpoints keep the plain module's keys
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager"))
    opts = ["trainer.steps=3", "trainer.log_every=1", "trainer.ckpt_every=0", "trainer.precision=fp32"]
    plain = _trainer(tmp_path / "plain", *opts)
    plain.fit()
    fast = _trainer(tmp_path / "fast", *opts, "trainer.compile=true", "trainer.channels_last=true")
    assert fast.micro_loss != fast._micro_loss  # the compiled step
    fast.fit()
    assert all(abs(a[1] - b[1]) < 1e-4 for a, b in zip(_losses(tmp_path / "plain"), _losses(tmp_path / "fast")))
    state = load_checkpoint(list_checkpoints(tmp_path / "fast" / "checkpoints")[-1])
    assert state["model"].keys() == plain.net.state_dict().keys()  # no _orig_mod. prefixes
    assert all(torch.allclose(state["model"][k], v, atol=1e-4) for k, v in plain.net.state_dict().items())
    # a compiled run stopped at step 3 and resumed to 5 is the compiled run of 5 steps, bit for bit (constant lr: the
    # schedule does not depend on the total)
    for name, steps in (("whole", 5), ("split", 3), ("split", 5)):
        _trainer(tmp_path / name, *opts[1:], f"trainer.steps={steps}", "trainer.compile=true", "optim.decay=constant").fit()
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")
    a, b = (load_checkpoint(list_checkpoints(tmp_path / n / "checkpoints")[-1]) for n in ("whole", "split"))
    assert all(torch.equal(a[key][k], b[key][k]) for key in ("model", "ema") for k in a[key])


@pytest.mark.slow
def test_bench_script_runs_and_records_its_numbers(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "scripts/bench.py", "--model", "unet_tiny", "--batch", "8", "--steps", "2", "--sample-steps", "2",
                           "--sample-batch", "8", "--precision", "fp32", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["parameters"] > 0 and record["forward_gflops_per_img"] > 0 and record["matmul_tflops"] > 0
    assert record["train_img_per_s"] > 0 and record["sample_img_per_s"] > 0 and 0 < record["train_mfu"] and "train_img_per_s" in proc.stdout


def test_a_launcher_that_cannot_launch_is_a_one_line_error_without_a_sweep_folder(cli, tmp_path):
    # without SLURM (or without the submitit plugin) the slurm preset cannot launch: one line, no folder left behind
    code, out, err = cli("inspect-schedule", "-m", "hydra/launcher=slurm", "schedule=linear,cosine")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("diffctl inspect-schedule: error: ") and "Traceback" not in err, err
    assert "srun" in lines[0] or "submitit_slurm" in lines[0], lines[0]
    assert not list((tmp_path / "outputs").rglob("multirun.yaml"))
