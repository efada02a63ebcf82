"""The GPU paths, on a GPU (marked ``cuda``: skipped without one; ``scripts/gpu_check.sh`` runs them): a
steady-state step never synchronises, fp16's GradScaler skips an overflow and recovers, bf16 and
fp32/TF32 train and resume, a CUDA run resumes on CPU and back, torchrun takes the NCCL path, and the
compiled step (CUDA graphs included) trains as the eager one."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import SMALL, logged_losses, make_trainer

from diffctl.io.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("opts", [(), ("model.num_classes=10", "trainer.accumulate=2", "model.dropout=0.1"), ("trainer.precision=fp16",),
                                  ("trainer.precision=fp32", "loss=edm", "model.prediction=v", "trainer.channels_last=true")],
                         ids=["bf16", "labels-accumulate", "fp16", "fp32-edm-channels-last"])
def test_a_steady_state_cuda_step_never_synchronises(tmp_path, opts):
    trainer = make_trainer(tmp_path, "device=cuda", *opts)
    trainer.train_step()
    trainer.train_step()  # the first steps set things up (the optimiser's state, GradScaler's scale, cuBLAS handles)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    window = trainer.tally.read()
    assert window.applied == 5 and math.isfinite(window.loss)


def test_fp16_overflow_is_skipped_and_the_scale_recovers(tmp_path):
    trainer = make_trainer(tmp_path, "device=cuda", "trainer.precision=fp16", "trainer.steps=12", "trainer.ckpt_every=0", "trainer.log_every=1")
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, growth_interval=4)
    hook = trainer.net.stem.weight.register_hook(lambda g: g * float("inf") if trainer.step < 3 else g)
    trainer.fit()
    hook.remove()
    # three overflows halve 2^16 to 2^13 and skip their steps; nine good steps double it at the 4th and 8th: 2^15
    assert trainer.scaler.get_scale() == 2.0**15 and trainer.ema.updates == 9
    losses = logged_losses(tmp_path)
    assert [s for s, loss, *_ in losses if loss is None] == [1, 2, 3] and all(math.isfinite(l) for _, l, *_ in losses[3:])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cuda_training_resumes_where_it_stopped(tmp_path, precision):
    opts = ["device=cuda", f"trainer.precision={precision}", "trainer.log_every=1", "trainer.ckpt_every=3", "model.dropout=0.1"]
    whole = make_trainer(tmp_path / "whole", *opts, "trainer.steps=6")
    whole.fit()
    first = make_trainer(tmp_path / "split", *opts, "trainer.steps=3")
    first.fit()
    second = make_trainer(tmp_path / "split", *opts, "trainer.steps=6")
    second.fit()
    a, b = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "split")
    assert [r[0] for r in a] == [r[0] for r in b] == [1, 2, 3, 4, 5, 6]
    # the same draws and dropout masks (the step's seed, the CUDA RNG state restored); cuDNN's kernels may add rounding
    assert all(abs(x[1] - y[1]) <= 1e-3 * abs(x[1]) for x, y in zip(a, b)), (a, b)


def test_a_cuda_run_resumes_on_cpu_and_back(tmp_path):
    opts = ["trainer.log_every=1", "trainer.ckpt_every=0", "trainer.precision=fp32"]
    make_trainer(tmp_path, *opts, "device=cuda", "trainer.steps=3").fit()
    on_cpu = make_trainer(tmp_path, *opts, "device=cpu", "trainer.steps=5")
    assert on_cpu.fit()["steps"] == 5 and on_cpu.branch == 0 and on_cpu.net.stem.weight.device.type == "cpu"
    back = make_trainer(tmp_path, *opts, "device=cuda", "trainer.steps=7")
    assert back.fit()["steps"] == 7 and back.ema.updates == 7
    state = load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])
    assert state["step"] == 7 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r[0] for r in logged_losses(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]


def test_torchrun_with_one_process_takes_the_nccl_path(tmp_path):
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "diffctl", "train", *SMALL,
                           "device=cuda", "trainer.steps=4", "trainer.log_every=1", "trainer.ckpt_every=2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "x 1 processes (DDP, nccl, global batch 8)" in proc.stdout + proc.stderr
    run = next(p.parent for p in (tmp_path / "outputs").rglob("metrics.jsonl"))
    assert [r[0] for r in logged_losses(run)] == [1, 2, 3, 4]


def test_the_compiled_step_with_cuda_graphs_trains_as_the_eager_one(tmp_path):
    opts = ["device=cuda", "trainer.steps=5", "trainer.log_every=1", "trainer.ckpt_every=0", "trainer.precision=fp32"]
    make_trainer(tmp_path / "eager", *opts).fit()
    fast = make_trainer(tmp_path / "graphs", *opts, "trainer.compile=reduce-overhead")
    fast.fit()
    a, b = logged_losses(tmp_path / "eager"), logged_losses(tmp_path / "graphs")
    assert all(abs(x[1] - y[1]) <= 2e-3 * abs(x[1]) for x, y in zip(a, b)), (a, b)
    state = load_checkpoint(list_checkpoints(tmp_path / "graphs" / "checkpoints")[-1])
    assert state["model"].keys() == fast.net.state_dict().keys()
