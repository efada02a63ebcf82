"""Production training: exact resume, signals, crash-safe checkpoints, non-finite steps, safe loading,
one-line errors for bad input (a fuzz test of the real CLI) and run folders that never collide."""

import json
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL, TINY_TRAIN, run_folder
from conftest import logged_losses as _losses
from conftest import make_trainer as _trainer

from diffctl.errors import Interrupted, UsageError
from diffctl.io.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from diffctl.io.rundir import forget_run_dirs, new_run_dir


def _interrupt_after(trainer, step: int, signum=signal.SIGINT):
    """Deliver a real signal to this process right after optimisation step ``step``."""
    original = trainer.train_step

    def train_step():
        out = original()
        if trainer.step == step:
            signal.raise_signal(signum)
        return out

    trainer.train_step = train_step


# --- 1. exact resume -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, precision):
    # dropout and labels with classifier-free dropout exercise the global and the data RNG; log_every=2 with a stop at
    # the odd step 3 needs the pending loss window restored; warm-up + cosine decay need the LR schedule restored
    opts = ["trainer.steps=7", "trainer.log_every=2", "trainer.ckpt_every=0", "model.dropout=0.1", "model.num_classes=10",
            f"trainer.precision={precision}"]
    whole = _trainer(tmp_path / "whole", *opts)
    whole.fit()
    first = _trainer(tmp_path / "split", *opts)
    _interrupt_after(first, 3)
    with pytest.raises(Interrupted) as stop:
        first.fit()
    assert stop.value.code == 130 and "stopped by SIGINT at step 3 of 7" in str(stop.value) and "resume=" in str(stop.value)
    assert [p.name for p in list_checkpoints(tmp_path / "split" / "checkpoints")] == ["step_00000003.pt"]
    resumed = _trainer(tmp_path / "split", *opts)  # resume=auto: a new process would do the same
    resumed.fit()
    for a, b in ((whole.net, resumed.net), (whole.ema.model, resumed.ema.model)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
    sa, sb = whole.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(sa[k][n], sb[k][n]) for k in sa for n in ("exp_avg", "exp_avg_sq", "step"))
    assert _losses(tmp_path / "whole") == _losses(tmp_path / "split")  # same logged losses, LRs and gradient norms
    assert [r[0] for r in _losses(tmp_path / "split")] == [2, 4, 6, 7]


# --- 2. signals through the real CLI ---------------------------------------------------------------
def _start_train(diffctl, *args) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(diffctl.root), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diffctl", "train", *SMALL, "trainer.log_every=1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=diffctl.root.parent)
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((diffctl.root / "train").glob("*/*/metrics.jsonl")) if (diffctl.root / "train").is_dir() else []
        if found and len(found[0].read_text().splitlines()) >= 3:
            return proc, found[0].parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training did not start")


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_run_resumes(diffctl):
    proc, run = _start_train(diffctl, "trainer.steps=100000", "trainer.ckpt_every=0")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = [l for l in err.splitlines() if "stopped by SIGTERM" in l]
    assert line and f"Resume with: diffctl train resume={run}" in line[0] and "Traceback" not in err
    step = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"]
    assert step >= 3 and not (run / "FAILED").exists()
    diffctl("train", f"resume={run}", f"trainer.steps={step + 2}")
    steps = [r[0] for r in _losses(run)]
    assert steps == list(range(1, step + 3)) and load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["step"] == step + 2


@pytest.mark.slow
def test_a_second_sigint_aborts_at_once(diffctl):
    proc, run = _start_train(diffctl, "trainer.steps=100000", "trainer.ckpt_every=0", "model=unet_small", "trainer.batch_size=512")
    proc.send_signal(signal.SIGINT)
    # as a person presses Ctrl-C twice: the second after the first was seen (two signals sent back to back
    # reach Python's handler once, and then the run stops gracefully, which this test must tell apart)
    deadline = time.time() + 30
    while "SIGINT received" not in (run / "train.log").read_text() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    # the abort's signature: no graceful stop (which would print how to resume and write a checkpoint), the run marked
    assert err.strip().splitlines()[-1] == "diffctl train: interrupted" and "stopped by SIGINT" not in err, err
    assert not list_checkpoints(run / "checkpoints")  # ckpt_every=0: only a graceful stop would have written one
    assert (run / "FAILED").read_text() == "diffctl train failed: interrupted\n"


# --- 3. crash-safe checkpoints ---------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_while_checkpointing_leaves_loadable_checkpoints_and_resume_works(diffctl):
    # a checkpoint every step: most of the time goes into writing them, so the kill lands in a write
    proc, run = _start_train(diffctl, "trainer.steps=100000", "trainer.ckpt_every=1", "trainer.keep_last=2", "model=unet_small")
    time.sleep(random.Random().uniform(0.0, 0.5))
    proc.kill()
    proc.communicate()
    ckpts = list_checkpoints(run / "checkpoints")
    assert 1 <= len(ckpts) <= 3
    steps = [load_checkpoint(c)["step"] for c in ckpts]
    resumed = diffctl("train", f"resume={run}", f"trainer.steps={steps[-1] + 1}")
    assert f"resumed from {ckpts[-1]} at step {steps[-1]}" in resumed.stdout + resumed.stderr
    assert not list((run / "checkpoints").glob(".*tmp*"))  # a killed write's temp file is cleaned up by the next save


def test_a_failed_write_replaces_nothing(tmp_path, monkeypatch):
    import errno

    good = save_checkpoint(tmp_path / "step_00000001.pt", {"step": 1, "w": torch.ones(10)})

    real_open = open

    class FullDisk:  # accepts a part of the bytes, then fails as a full disk does
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    import builtins

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: FullDisk(real_open(p, mode, *a, **k)) if "w" in mode else real_open(p, mode, *a, **k))
    with pytest.raises(UsageError, match=r"could not write checkpoint .*step_00000002.pt: No space left on device"):
        save_checkpoint(tmp_path / "step_00000002.pt", {"step": 2})
    assert list_checkpoints(tmp_path) == [good] and load_checkpoint(good)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt"]  # no temp file, no partial checkpoint


def test_old_checkpoints_are_pruned_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    import diffctl.trainer as train

    trainer = _trainer(tmp_path, "trainer.steps=8", "trainer.ckpt_every=2", "trainer.keep_last=1", "trainer.precision=fp32")
    real = train.save_checkpoint

    def failing(path, state):  # the third checkpoint's write fails (disk full)
        if state["step"] == 6:
            raise UsageError(f"could not write checkpoint {path}: No space left on device")
        return real(path, state)

    monkeypatch.setattr(train, "save_checkpoint", failing)
    with pytest.raises(UsageError, match="No space left"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000004.pt"]  # step 2 pruned, step 4 kept


@pytest.mark.slow
def test_a_real_write_failure_is_one_line_and_marks_the_run_failed(diffctl, tmp_path):
    # the OS refuses to grow any file past 200 kB (as a full disk would refuse): the checkpoint write fails
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(diffctl.root)}
    proc = subprocess.run([sys.executable, "-m", "diffctl", "train", *TINY_TRAIN, "model=unet_small", "trainer.sample_every=0"],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("diffctl train: error: could not write checkpoint")
    assert "File too large" in proc.stderr
    run = next((diffctl.root / "train").glob("*/*"))
    assert (run / "FAILED").read_text().startswith("diffctl train failed: could not write checkpoint")
    assert not list_checkpoints(run / "checkpoints") and not list((run / "checkpoints").iterdir())


# --- 4. non-finite losses and gradients ------------------------------------------------------------
def test_non_finite_steps_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, "trainer.steps=40", "trainer.ckpt_every=4", "trainer.log_every=1", "trainer.max_nonfinite=3")
    real = trainer.preconditioned.loss
    nan_steps = {3} | set(range(10, 40))  # one lone NaN (skipped, training goes on), then NaN for good
    monkeypatch.setattr(trainer.preconditioned, "loss", lambda *a, **k: real(*a, **k) * (float("nan") if trainer.step + 1 in nan_steps else 1.0))
    with pytest.raises(UsageError, match=r"3 non-finite steps in a row, the last at step 12 \(non-finite loss \(nan\)\): stopped; "
                                         r"the last good checkpoint .*step_00000008.pt is kept"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step_00000008.pt"
    assert trainer.ema.updates == 8  # steps 3, 10, 11 and 12 changed nothing
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["loss"] is None] == [3, 10, 11]


def test_non_finite_gradients_are_skipped_and_non_finite_weights_never_checkpointed(tmp_path):
    trainer = _trainer(tmp_path, "trainer.steps=6", "trainer.ckpt_every=0", "trainer.precision=fp32")
    weight = trainer.net.stem.weight
    hook = weight.register_hook(lambda g: g * float("inf") if trainer.step == 2 else g)  # the 3rd step's gradient overflows
    before = {}
    original = trainer.train_step

    def step():
        if trainer.step == 2:
            before.update({k: v.clone() for k, v in trainer.net.state_dict().items()})
        out = original()
        if trainer.step == 3:
            assert not out[2] and all(torch.equal(before[k], v) for k, v in trainer.net.state_dict().items())
        return out

    trainer.train_step = step
    trainer.fit()
    hook.remove()
    assert trainer.ema.updates == 5 and all(torch.isfinite(p).all() for p in trainer.net.parameters())
    with torch.no_grad():
        weight.fill_(float("nan"))
    with pytest.raises(UsageError, match="the weights are not finite at step 6: not checkpointed"):
        trainer.save()
    assert load_checkpoint(list_checkpoints(tmp_path / "checkpoints")[-1])["step"] == 6  # the good one is still the newest


def test_grad_scaler_overflow_skips_steps_and_lowers_the_scale(tmp_path):
    # fp16's path, on CPU: a GradScaler whose first three backward passes overflow skips those steps and halves its scale each time
    trainer = _trainer(tmp_path, "trainer.steps=8", "trainer.ckpt_every=0", "trainer.precision=fp32")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6)
    hook = trainer.net.stem.weight.register_hook(lambda g: g * float("inf") if trainer.step < 3 else g)
    trainer.fit()
    hook.remove()
    assert trainer.scaler.get_scale() == 2.0**13 and trainer.ema.updates == 5 and trainer.pending.in_a_row == 0
    assert all(torch.isfinite(p).all() for p in trainer.net.parameters())


# --- 5. safe loading ---------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_empty_truncated_and_foreign_checkpoints_are_refused(tmp_path, monkeypatch, capfd):
    from diffctl.cli import run_command

    monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", str(tmp_path / "outputs"))
    marker = tmp_path / "pwned"
    assert pickle.loads(pickle.dumps(_Payload(tmp_path / "proof"))) == 0 and (tmp_path / "proof").exists()  # the payload works
    files = {"empty.pt": b"", "text.pt": b"hello"}
    torch.save({"format": "diffctl-checkpoint", "version": 1, "model": _Payload(marker)}, tmp_path / "zip.pt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"format": "diffctl-checkpoint", "model": _Payload(marker)}))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    good = save_checkpoint(tmp_path / "good.pt", {"step": 1, "w": torch.randn(5000)})
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:3000])
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    runs = [("sample", [f"ckpt={tmp_path / n}"]) for n in ("zip.pt", "raw.pt", "foreign.pt", "truncated.pt", *files)]
    runs += [("eval", [f"ckpt={tmp_path / 'raw.pt'}"]), ("train", [*TINY_TRAIN, f"resume={tmp_path / 'zip.pt'}"]),
             ("sample", ["ckpt=oracle", "dataset=gmm", "classes=all", f"guidance.classifier={tmp_path / 'zip.pt'}"])]
    for command, args in runs:
        code = run_command(command, args)
        err = capfd.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args, err)
        assert "not a valid diffctl checkpoint" in lines[0] or "is not a diffctl checkpoint" in lines[0], (args, lines)
    assert not marker.exists()  # no payload ever ran


# --- 6. bad input: a fuzz test of the real CLI ------------------------------------------------------
BAD = {
    "unknown option": ["model=foo", "sampler=euler_x", "schedule=quadratic", "dataset=imagenet", "loss=l1", "optim=sgd"],
    "unknown group or key": ["foo=bar", "optimizer=adam", "trainer.foo=1", "model.width=3", "+trainer.foo=1", "+model.depth2=3",
                             "guidance.strength=2", "inpaint.where=left", "~trainer", "sampler.gamma=1"],
    "wrong type": ["trainer.steps=abc", "trainer.steps=1.5", "trainer.batch_size=[1,2]", "optim.lr=fast", "seed=x",
                   "num_samples=many", "steps=[1,a]", "trainer.ema_decay=high", "schedule.timesteps=1e3x", "ema=maybe",
                   "classes={a:1}", "model.channel_mult=3"],
    "out of range": ["trainer.steps=0", "trainer.batch_size=-1", "optim.lr=0", "num_samples=0", "steps=0", "schedule.timesteps=1",
                     "model.channels=0", "trainer.grad_clip=-1", "batch_size=0", "rows=1", "sampler.eta=-0.5", "guidance.scale=-3",
                     "trainer.max_nonfinite=0", "model.num_res_blocks=0", "optim.beta2=1.5", "model.dropout=1"],
    "absurd": ["trainer.steps=100000000000000000000", "num_samples=1000000000000", "optim.lr=nan", "optim.lr=inf",
               "trainer.ema_decay=2", "schedule.timesteps=10000000", "steps=100000000", "trainer.batch_size=1000000000",
               "model.channels=1000000", "guidance.rescale=7", "inpaint.resample=100000", "trainer.cond_drop_prob=nan", "optim.lr=1e38"],
    "bad choice": ["model.prediction=noise", "sampler.spacing=random", "device=tpu", "device=cuda:1", "task=regress",
                   "trainer.precision=fp8", "optim.decay=step", "resume=sometimes/x"],
    "missing file": ["ckpt=/nonexistent/x.pt", "ckpt=latest", "resume=/nonexistent/run", "inception_weights=/no/such/file",
                     "guidance.classifier=/no/such/run", "paths.output_root=", "paths.cache_dir="],
    "syntax": ["trainer.steps=", "=5", "schedule=[linear", "'model=unet_small,'", "trainer..steps=1", "seed=1=2", "classes=[3,"],
}
COMMANDS = ["train", "sample", "eval", "inspect-schedule"]


def _fuzz_cases(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    pool = [v for values in BAD.values() for v in values]
    cases = [(c, [v]) for v in pool for c in rng.sample(COMMANDS, 1)]  # every bad value once
    while len(cases) < n:  # then random mixes of one to three, with harmless valid ones
        args = rng.sample(pool, rng.randint(1, 3)) + rng.sample(["seed=3", "device=cpu"], rng.randint(0, 1))
        rng.shuffle(args)
        cases.append((rng.choice(COMMANDS), args))
    return cases


@pytest.mark.parametrize("cases", [pytest.param(0, id="each-bad-value"), pytest.param(100, id="random-mixes", marks=pytest.mark.slow)])
def test_fuzzed_bad_overrides_are_one_line_errors_without_run_folders(tmp_path, monkeypatch, capfd, cases):
    """Every bad value once (fast suite), then random mixes of one to three of them (slow)."""
    from diffctl.cli import run_command

    root = tmp_path / "outputs"
    monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    unwritable = tmp_path / "a_file"
    unwritable.write_text("")
    pool = sum(len(v) for v in BAD.values())
    cases = _fuzz_cases(pool)[:pool] + [(c, [f"paths.output_root={unwritable}/runs"]) for c in COMMANDS] if not cases else _fuzz_cases(pool + cases)[pool:]
    for command, args in cases:
        code = run_command(command, list(args))
        out, err = capfd.readouterr()
        lines = err.strip().splitlines()
        assert code == 2, (command, args, code, out, err)
        assert len(lines) == 1 and lines[0].startswith(f"diffctl {command}: error: ") and "Traceback" not in out + err, (command, args, err)
        assert len(lines[0]) < 400, lines[0]
        leftovers = [p for p in root.rglob("config.yaml") if not (p.parent / "FAILED").exists()] if root.exists() else []
        assert not leftovers, (command, args, leftovers)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]


# --- 7. concurrency ----------------------------------------------------------------------------------
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    folders = []
    for _ in range(3):
        forget_run_dirs()  # as each new command does
        folders.append(new_run_dir(str(tmp_path), "train"))
    assert len(set(folders)) == 3 and all(Path(f).is_dir() for f in folders)
    names = sorted(Path(f).name for f in folders)
    assert len({n.split("_")[0] for n in names}) <= 2  # same second (or two): suffixes keep them apart
    forget_run_dirs()


@pytest.mark.slow
def test_concurrent_commands_never_share_a_folder(diffctl):
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(diffctl.root)}
    procs = [subprocess.Popen([sys.executable, "-m", "diffctl", "inspect-schedule", "rows=2", f"compare=[{s}]"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=diffctl.root.parent) for s in ("linear", "cosine", "sigmoid")]
    results = [p.communicate(timeout=120) for p in procs]
    folders = [run_folder(type("P", (), {"stdout": out, "stderr": err})) for out, err in results]
    assert len(set(folders)) == 3
    for folder, s in zip(folders, ("linear", "cosine", "sigmoid")):
        assert (folder / "schedule.png").exists() and f"- {s}" in (folder / "config.yaml").read_text()


def test_a_rejected_resume_leaves_the_run_as_it_was_and_a_finished_resume_clears_failed(cli, tmp_path):
    code, out, err = cli("train", *TINY_TRAIN, "trainer.sample_every=0")
    assert code == 0, err
    run = next((tmp_path / "outputs" / "train").glob("*/*"))
    before = {p: (run / p).read_text() for p in ("config.yaml", ".hydra/overrides.yaml")}
    for args, message in ((["optim.weight_decay=0.5"], "optim.weight_decay=0.0 (now 0.5)"), (["task=classifier"], "task='diffusion' (now 'classifier')")):
        code, out, err = cli("train", f"resume={run}", *args)
        assert code == 2 and message in err, err
        assert {p: (run / p).read_text() for p in before} == before  # config and overrides untouched
    assert not (run / "FAILED").exists()
    (run / "FAILED").write_text("diffctl train failed: interrupted\n")  # as a second Ctrl-C leaves it
    code, out, err = cli("train", f"resume={run}", "trainer.steps=6")
    assert code == 0, err
    assert "trainer.steps changed from 4 to 6 on resume" in out + err
    assert "step 6/6: loss" in out + err  # without a terminal (no progress bar) the log gets a line per log_every
    assert not (run / "FAILED").exists() and "steps: 6" in (run / "config.yaml").read_text()
    assert "trainer.steps=6" in (run / ".hydra" / "overrides.yaml").read_text()  # a later resume=<run> continues with it
    code, out, err = cli("sample", "ckpt=latest", "steps=2", "num_samples=2")
    assert code == 0 and str(run) in out + err
