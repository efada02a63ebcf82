"""Reliability, round two: diffctl never deletes what it did not create, never resumes or scores the
wrong thing, and answers crafted checkpoints, data files and run folders with one line.

Each test here failed before the change it guards (see docs/reliability.md)."""

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN as TRAIN
from conftest import assert_one_line_error

from diffctl.errors import UsageError
from diffctl.io.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from diffctl.io.rundir import MetricsLog, resolve_checkpoint



@pytest.fixture
def template(shared_runs):
    """The session's finished 4-step pixel run (checkpoints 2 and 4), read, never changed: tests work on copies of it."""
    return shared_runs["pixel"]


@pytest.fixture
def run(trained):
    """A copy of the template run under this test's output root (outputs/train/<date>/<time>)."""
    return trained("pixel")


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` -> its bytes."""
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- 1. never delete what diffctl did not create ---------------------------------------------------
@pytest.mark.parametrize("contents", [[], [".hydra/overrides.yaml", "train.log", "config.yaml"], ["checkpoints/notes.txt"]])
def test_resume_into_a_folder_without_checkpoints_touches_nothing(cli, tmp_path, contents):
    folder = tmp_path / "mine" / "project" / "other_app_run"
    folder.mkdir(parents=True)
    for name in contents:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("- a=1\n" if name.endswith(".yaml") else "user data\n")
    before = _tree(tmp_path / "mine")
    assert_one_line_error(cli("train", f"resume={folder}"), "train", "no checkpoint in")
    assert folder.is_dir() and _tree(tmp_path / "mine") == before  # nothing removed, nothing written


def test_a_rejected_run_removes_only_the_folders_it_made(cli, tmp_path):
    (tmp_path / "outputs" / "train").mkdir(parents=True)  # the user's (empty) folder, made before diffctl ran
    assert_one_line_error(cli("train", "trainer.steps=-1"), "train", "trainer.steps=-1 is out of range")
    assert (tmp_path / "outputs" / "train").is_dir() and not any((tmp_path / "outputs" / "train").iterdir())
    shutil.rmtree(tmp_path / "outputs")
    assert_one_line_error(cli("train", "dataset=mnist", "dataset.root=/nonexistent"), "train", "lacks")
    assert not (tmp_path / "outputs").exists()  # made by this command for its run folder: removed with it


def test_a_failed_resume_of_a_foreign_folder_leaves_its_files(cli, tmp_path):
    folder = tmp_path / "foreign"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "step_00000001.pt").write_bytes(b"someone else's weights")
    before = _tree(folder)
    assert_one_line_error(cli("train", f"resume={folder}"), "train", "not a valid diffctl checkpoint")
    after = _tree(folder)
    assert all(after.get(p) == b for p, b in before.items())
    assert not {p.name for p in after} - {p.name for p in before} - {"train.log", ".diffctl.lock"}  # no config.yaml, no FAILED


def test_an_eval_sweep_with_too_few_samples_is_refused_before_sampling_and_leaves_no_folder(cli, run, monkeypatch):
    # fd_ref needs num_samples >= the test split (300 digits): refused before any sample is drawn (a spy on generation)
    # and before the reference classifier is trained; the sweep folder, holding only multirun.yaml, goes with it
    import diffctl.evaluation

    drawn = []
    monkeypatch.setattr(diffctl.evaluation, "generate_from_config", lambda *a, **k: drawn.append(1))
    assert_one_line_error(cli("eval", "-m", f"ckpt={run}", "num_samples=100", "metrics=[fd_ref,test_loss]", "seed=0,1"), "eval",
                          "num_samples=100: fd_ref needs num_samples >= 300, the test split's size")
    assert not drawn
    assert not (run.parents[2] / "eval").exists()  # outputs/eval: no sweep folder, no job folder


# --- 2. resuming the right branch --------------------------------------------------------------------
def test_resume_from_an_older_checkpoint_moves_the_abandoned_branch_aside(cli, run):
    old4 = (run / "checkpoints" / "step_00000004.pt").read_bytes()
    code, out, err = cli("train", f"resume={run / 'checkpoints' / 'step_00000002.pt'}", "trainer.steps=3")
    assert code == 0, err
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002.pt", "step_00000003.pt"]
    (abandoned,) = (run / "abandoned").iterdir()
    assert abandoned.name.endswith("_after_step_2")
    assert (abandoned / "checkpoints" / "step_00000004.pt").read_bytes() == old4  # moved, not deleted
    assert [r["step"] for r in MetricsLog(abandoned / "metrics.jsonl").read()] == [3, 4]
    records = _records(run)
    assert [(r["step"], r["branch"], r.get("event")) for r in records] == [(1, 0, None), (2, 0, None), (2, 1, "branch"), (3, 1, None)]
    assert records[2]["abandoned"] == f"abandoned/{abandoned.name}" and records[2]["resumed_from"].endswith("step_00000002.pt")
    assert load_checkpoint(run / "checkpoints" / "step_00000003.pt")["branch"] == 1
    future = time.time() + 100
    os.utime(abandoned / "checkpoints" / "step_00000004.pt", (future, future))  # even when it is the newest file
    assert resolve_checkpoint("latest", run.parents[2]) == run / "checkpoints" / "step_00000003.pt"
    # the run folder now leads to the new branch only: resume=<run> continues from step 3, not the stale step 4
    code, out, err = cli("train", f"resume={run}", "trainer.steps=5")
    assert code == 0 and f"resumed from {run / 'checkpoints' / 'step_00000003.pt'} at step 3" in out + err, err
    assert [(r["step"], r["branch"]) for r in _records(run) if "event" not in r] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    # the abandoned branch can still be continued: in a new run folder, leaving this one alone
    before = _tree(run)
    code, out, err = cli("train", *TRAIN, f"resume={abandoned / 'checkpoints' / 'step_00000004.pt'}", "trainer.steps=5")
    assert code == 0 and _tree(run) == before, err
    other = [p for p in run.parent.iterdir() if p != run]
    assert len(other) == 1 and [p.name for p in list_checkpoints(other[0] / "checkpoints")] == ["step_00000005.pt"]


def test_resuming_the_newest_checkpoint_continues_the_branch_and_drops_a_torn_line(cli, run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.3')  # a write cut short by a full disk
    code, out, err = cli("train", f"resume={run}", "trainer.steps=6")
    assert code == 0, err
    assert "metrics.jsonl: its last line is torn" in out + err
    assert [(r["step"], r["branch"]) for r in _records(run)] == [(i, 0) for i in range(1, 7)]  # every line parses, one history
    assert not (run / "abandoned").exists()


def test_a_torn_line_in_the_middle_is_a_one_line_error_naming_the_file(cli, run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], '{"step": 2, "lo', *lines[2:]]) + "\n")
    assert_one_line_error(cli("train", f"resume={run}", "trainer.steps=6"), "train", f"{run / 'metrics.jsonl'}: line 2 is not a JSON record")


def test_an_append_cut_short_by_the_file_size_limit_leaves_the_log_as_it_was(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(step=1, loss=0.5)
    before = log.path.read_bytes()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 10, old_limit[1]))  # the OS lets 10 more bytes through, as a full disk would
    try:
        with pytest.raises(UsageError, match=f"could not append to {log.path}"):
            log.write(step=2, loss=0.25, note="x" * 100)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert log.path.read_bytes() == before


# --- 10. the advice after a divergence can be followed ------------------------------------------------
def test_resume_with_a_lower_learning_rate_is_a_new_branch_that_uses_it(cli, run):
    code, out, err = cli("train", f"resume={run}", "trainer.steps=6", "optim.lr=0.0005", "trainer.grad_clip=0.5")
    assert code == 0, err
    records = _records(run)
    event = next(r for r in records if r.get("event") == "branch")
    assert event["step"] == 4 and event["branch"] == 1 and event["abandoned"] is None
    assert event["changed"] == {"optim.lr": [0.002, 0.0005], "trainer.grad_clip": [1.0, 0.5]}
    # LambdaLR with warm-up 1 and cosine decay to 0.1 over 6 steps, now around the new peak lr
    lam = lambda s: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (s - 1) / 5))
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[5] == pytest.approx(0.0005 * lam(5), rel=1e-9) and lrs[6] == pytest.approx(0.0005 * lam(6), rel=1e-9)
    state = load_checkpoint(run / "checkpoints" / "step_00000006.pt")
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.0005 and state["config"]["optim"]["lr"] == 0.0005


def test_the_divergence_message_gives_a_command_that_works(tmp_path, monkeypatch):
    from conftest import make_trainer

    trainer = make_trainer(tmp_path / "run", "trainer.steps=8", "trainer.ckpt_every=2", "trainer.max_nonfinite=2")
    original = trainer.preconditioned.loss
    monkeypatch.setattr(trainer.preconditioned, "loss", lambda *a, **k: original(*a, **k) * (float("nan") if trainer.step >= 3 else 1.0))
    with pytest.raises(UsageError) as err:
        trainer.fit()
    message = str(err.value)
    command = message.split("resume from the last good checkpoint with a lower learning rate: ")[1].split(" (")[0]
    assert command == f"diffctl train resume={tmp_path / 'run'} optim.lr=0.0002"
    again = make_trainer(tmp_path / "run", "trainer.steps=8", "trainer.ckpt_every=2", "optim.lr=0.0002")
    assert again.fit()["steps"] == 8 and again.branch == 1


# --- 3. scoring with the right reference ------------------------------------------------------------
def test_reference_classifiers_are_cached_per_dataset_content(tmp_path):
    from diffctl.data import Dataset
    from diffctl.metrics.reference import reference_classifier

    def data(classes, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(40) % classes
        x = (y[:, None, None, None].float() / classes * 2 - 1 + 0.1 * torch.randn(40, 1, 8, 8, generator=g)).clamp(-1, 1)
        return Dataset("folder", x[:32], x[32:], y[:32], y[32:], levels=256, num_classes=classes)

    a, b, c = data(2, 0), data(2, 1), data(3, 0)  # one name, three contents (two folders; another class count)
    nets = [reference_classifier(d, tmp_path) for d in (a, b, c)]
    assert len(set(p.name for p in tmp_path.glob("refnet_folder_*.pt"))) == 3
    assert len({info["name"] for _, info in nets}) == 3 and nets[2][0].head.out_features == 3
    again, info = reference_classifier(a, tmp_path)  # from the cache, the same network
    assert info == nets[0][1]


def test_processes_that_need_one_reference_classifier_at_once_train_it_once(tmp_path, monkeypatch):
    """Sweep jobs evaluated side by side share the cache: the first trains the classifier, the others wait and read it
    (two threads here: each takes its own lock on the file, as two processes do)."""
    import threading
    import time

    from diffctl.data import Dataset
    from diffctl.metrics import reference

    fits, fit = [], reference._fit

    def slow_fit(data):  # each caller checks the cache well before any fit ends
        fits.append(data.name)
        time.sleep(0.5)
        return fit(data, epochs=1)

    monkeypatch.setattr(reference, "_fit", slow_fit)
    y = torch.arange(40) % 2
    data = Dataset("folder", torch.rand(32, 1, 8, 8) * 2 - 1, torch.rand(8, 1, 8, 8) * 2 - 1, y[:32], y[32:], levels=256, num_classes=2)
    infos = []
    threads = [threading.Thread(target=lambda: infos.append(reference.reference_classifier(data, tmp_path)[1])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fits == ["folder"] and len(infos) == 2 and infos[0] == infos[1]


def test_a_cache_folder_that_cannot_hold_a_lock_is_read_without_one(tmp_path, monkeypatch):
    from diffctl.data import Dataset
    from diffctl.metrics import reference

    y = torch.arange(40) % 2
    data = Dataset("folder", torch.rand(32, 1, 8, 8) * 2 - 1, torch.rand(8, 1, 8, 8) * 2 - 1, y[:32], y[32:], levels=256, num_classes=2)
    monkeypatch.setattr(reference, "_fit", lambda d: reference.RefNet(1, 2, 8).eval())
    first = reference.reference_classifier(data, tmp_path)[1]

    class ReadOnly(reference.FileLock):  # as on a read-only shared cache (root ignores chmod, so it is simulated)
        def acquire(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(reference, "FileLock", ReadOnly)
    assert reference.reference_classifier(data, tmp_path)[1] == first


# --- 4. never write into the file-system root ----------------------------------------------------------
@pytest.mark.parametrize("how", ["env", "override"])
def test_an_empty_output_root_is_refused(cli, tmp_path, monkeypatch, how):
    existed = Path("/inspect-schedule").exists()
    if how == "env":
        monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", "")
        result = cli("inspect-schedule", "rows=2")
    else:
        result = cli("inspect-schedule", "rows=2", "paths.output_root=")
    assert_one_line_error(result, "inspect-schedule", "paths.output_root is empty")
    assert Path("/inspect-schedule").exists() == existed
    if how == "env":
        proc = subprocess.run([sys.executable, "-m", "diffctl", "runs"], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip().startswith("diffctl runs: error: the output root is empty")


# --- 6. one process per run folder ---------------------------------------------------------------------
def test_a_run_being_trained_is_locked_and_a_killed_holder_leaves_no_stuck_lock(cli, run):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from diffctl.io.rundir import RunLock; "
                               f"RunLock({str(run)!r}).__enter__(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    before = _tree(run)
    try:
        assert_one_line_error(cli("train", f"resume={run}", "trainer.steps=6"), "train", f"is being trained by pid {holder.pid} on ")
        assert {p: b for p, b in _tree(run).items() if p.name != "train.log"} == {p: b for p, b in before.items() if p.name != "train.log"}
    finally:
        holder.kill()
        holder.wait()
    code, out, err = cli("train", f"resume={run}", "trainer.steps=6")  # the kernel dropped the killed holder's lock
    assert code == 0, err


def test_a_checkpoint_write_never_removes_a_live_writers_temp_file(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".step_00000002.pt.tmp-{sleeper.pid}"
        live.write_bytes(b"being written")
        dead = tmp_path / ".step_00000001.pt.tmp-999999999"
        dead.write_bytes(b"left by a killed process")
        foreign = tmp_path / ".notes.txt.tmp-999999999"  # not a name diffctl writes: never touched
        foreign.write_text("the user's")
        save_checkpoint(tmp_path / "step_00000003.pt", {"step": 3})
        assert live.exists() and not dead.exists() and foreign.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# --- 7. never sample garbage silently ------------------------------------------------------------------
def test_non_finite_weights_are_refused_at_load(cli, run):
    path = run / "checkpoints" / "step_00000004.pt"
    state = torch.load(path, weights_only=True)
    name = next(iter(state["ema"]))
    state["ema"][name] = state["ema"][name].clone().fill_(float("nan"))
    torch.save(state, path)
    assert_one_line_error(cli("sample", f"ckpt={run}", "steps=2", "num_samples=2"), "sample", f"weights are not finite ({name} holds NaN")
    code, out, err = cli("sample", f"ckpt={run}", "steps=2", "num_samples=2", "ema=false")  # the raw weights are fine
    assert code == 0, err


def test_latest_skips_runs_marked_failed_unless_named(cli, run, template, tmp_path):
    newer = run.parent / (run.name + "_1")
    shutil.copytree(template, newer)
    os.utime(newer / "checkpoints" / "step_00000004.pt", (time.time() + 10, time.time() + 10))
    (newer / "FAILED").write_text("diffctl train failed: 10 non-finite steps in a row\n")
    code, out, err = cli("sample", "ckpt=latest", "steps=2", "num_samples=2")
    assert code == 0 and str(run / "checkpoints") in out + err and str(newer) not in out + err, err
    (run / "FAILED").write_text("diffctl train failed: interrupted\n")
    assert_one_line_error(cli("sample", "ckpt=latest", "steps=2", "num_samples=2"), "sample", f"are marked FAILED (newest: {newer}")
    code, out, err = cli("sample", f"ckpt={newer}", "steps=2", "num_samples=2")  # named: used
    assert code == 0, err


# --- 8. a checkpoint's config is data -------------------------------------------------------------------
def _crafted(run: Path, change) -> Path:
    path = run / "checkpoints" / "step_00000004.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return path


def test_a_checkpoints_config_never_runs_resolvers(cli, run, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFCTL_TEST_SECRET", "hunter2")
    target = tmp_path / "made_by_a_checkpoint"

    def change(state):
        state["config"]["model"]["arch"] = "${oc.env:DIFFCTL_TEST_SECRET}"
        state["config"]["schedule"]["name"] = f"${{diffctl_run_dir:{target},x}}"

    _crafted(run, change)
    code, out, err = cli("sample", f"ckpt={run}", "steps=2", "num_samples=2")
    assert code == 2 and "hunter2" not in out + err and "${oc.env:DIFFCTL_TEST_SECRET}" in err, err
    assert not target.exists()


def test_a_crafted_model_size_is_refused_before_any_allocation(cli, run):
    def change(state):  # ~600 GB of weights if built; the file holds the 4-step model's
        state["config"]["model"].update(channels=4096, num_res_blocks=64)

    _crafted(run, change)
    t0 = time.perf_counter()
    assert_one_line_error(cli("sample", f"ckpt={run}", "steps=2", "num_samples=2"), "sample", "weights do not match the model in its config")
    assert time.perf_counter() - t0 < 30


CRAFTED = {
    "no step": lambda s: s.pop("step"),
    "no config": lambda s: s.pop("config"),
    "no data_shape": lambda s: s.pop("data_shape"),
    "no model": lambda s: s.pop("model"),
    "step as text": lambda s: s.update(step="four"),
    "config as a list": lambda s: s.update(config=[1, 2]),
    "data_shape of text": lambda s: s.update(data_shape=["a"]),
    "absurd data_shape": lambda s: s.update(data_shape=[1, 10**9, 8]),
    "weights as text": lambda s: s["ema"].update({next(iter(s["ema"])): "w"}),
    "num_classes as text": lambda s: s.update(num_classes="ten"),
    "no model section": lambda s: s["config"].pop("model"),
    "no model.arch": lambda s: s["config"]["model"].pop("arch"),
    "channels as text": lambda s: s["config"]["model"].update(channels="wide"),
    "channel_mult of text": lambda s: s["config"]["model"].update(channel_mult="ab"),
    "unknown schedule": lambda s: s["config"]["schedule"].update(name="quadratic"),
    "negative timesteps": lambda s: s["config"]["schedule"].update(timesteps=-5),
    "unknown dataset": lambda s: s["config"]["dataset"].update(name="imagenet"),
    "prediction unknown": lambda s: s["config"]["model"].update(prediction="noise"),
    "no rng (resume)": lambda s: s.pop("rng"),
    "optimizer as text (resume)": lambda s: s.update(optimizer="adam"),
}


def test_crafted_checkpoints_are_one_line_errors(template, tmp_path):
    """Each crafted checkpoint is refused by what sample/eval (load_trained, then its dataset) or resume
    (Trainer.load) run, with an error the CLI prints as one line (UsageError, or ValueError naming the bad
    option); the fuzz test runs such files through the CLI itself."""
    from conftest import make_trainer

    from diffctl.data import load_dataset
    from diffctl.runtime import load_trained

    def sample(path):
        load_dataset(load_trained(path, torch.device("cpu")).cfg.dataset)

    resume = make_trainer(tmp_path / "resume", *TRAIN[1:])  # the template's config (model=unet_tiny ...)
    for name, change in CRAFTED.items():
        path = tmp_path / f"{name}.pt"
        state = torch.load(template / "checkpoints" / "step_00000004.pt", weights_only=True)
        change(state)
        torch.save(state, path)
        with pytest.raises((UsageError, ValueError)) as err:
            resume.load(path) if "(resume)" in name else sample(path)
        assert "\n" not in str(err.value) and (str(path) in str(err.value) or name == "unknown dataset"), (name, str(err.value))


# --- 9. tracebacks left: data files, inputs, run folders --------------------------------------------------
def test_decompression_bombs_are_refused_as_dataset_and_inpainting_input(tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    from PIL import Image

    from diffctl.config import load_option
    from diffctl.data import load_dataset
    from diffctl.data.inputs import load_png

    for i in range(3):
        (tmp_path / "imgs" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    cfg = OmegaConf.merge(load_option("dataset", "folder"), {"root": str(tmp_path / "imgs")})
    for limit in (100, 200):  # 256 pixels: beyond 2x the limit PIL raises its error, beyond 1x its warning
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(UsageError, match="refused as a possible decompression bomb"):
            load_dataset(cfg)
        with pytest.raises(UsageError, match="refused as a possible decompression bomb"):
            load_png(str(tmp_path / "imgs" / "a" / "0.png"), (1, 16, 16), "inpaint.image")


def _mnist_cfg(root):
    from omegaconf import OmegaConf

    from diffctl.config import load_option

    return OmegaConf.merge(load_option("dataset", "mnist"), {"root": str(root)})


@pytest.mark.parametrize("case,message", [
    ("labels of rank 3", "an idx file of 3 dimensions; labels have 1"),
    ("images of rank 1", "an idx file of 1 dimensions; images have 3"),
    ("label 12", "labels outside 0..9"),
    ("short labels", "has 5 labels for 8 images"),
])
def test_bad_idx_files_are_one_line_errors(tmp_path, case, message):
    from test_datasets import fake_mnist, write_idx

    from diffctl.data import load_dataset

    fake_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    if case == "labels of rank 3":
        write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros((8, 1, 1)))
    elif case == "images of rank 1":
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros(8))
    elif case == "label 12":
        write_idx(raw / "t10k-labels-idx1-ubyte", np.full(8, 12))
    else:
        write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(UsageError, match=message):
        load_dataset(_mnist_cfg(tmp_path))


class _HugeArray:
    """Unpickles (through the allowed numpy reconstructor) into an array of 10^15 bytes."""

    def __reduce__(self):
        from numpy.core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (10**15,), b"b"))


def test_a_cifar_batch_that_asks_for_a_petabyte_is_a_one_line_error(tmp_path):
    from test_datasets import fake_cifar

    from diffctl.data.vision import read_cifar_batch

    fake_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _HugeArray(), b"labels": [0]}, protocol=2))
    with pytest.raises(UsageError, match="not a CIFAR-10 batch \\(MemoryError"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}, protocol=2))
    from omegaconf import OmegaConf

    from diffctl.config import load_option
    from diffctl.data import load_dataset

    with pytest.raises(UsageError, match="labels outside 0..9"):
        load_dataset(OmegaConf.merge(load_option("dataset", "cifar10"), {"root": str(tmp_path)}))


@pytest.mark.parametrize("text", ["[unclosed", "just a string", "- 1\n- {a: b}\n", "\xff\xfe"])
def test_a_malformed_overrides_file_is_a_one_line_error(cli, run, text):
    (run / ".hydra" / "overrides.yaml").write_bytes(text.encode("latin1"))
    assert_one_line_error(cli("train", f"resume={run}"), "train", ".hydra/overrides.yaml")


def test_a_run_under_a_non_ascii_path_samples_and_resumes(cli, template, tmp_path, monkeypatch):
    root = tmp_path / "résumé ünï"
    monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", str(root))
    run = root / "train" / template.parent.name / template.name
    shutil.copytree(template, run)
    code, out, err = cli("train", f"resume={run}", "trainer.steps=5")
    assert code == 0 and "resumed from" in out + err, err
    code, out, err = cli("sample", f"ckpt={run}", "steps=2", "num_samples=2")
    assert code == 0, err


def test_an_absurd_learning_rate_is_refused(cli):
    assert_one_line_error(cli("train", "optim.lr=1e38"), "train", "optim.lr=1e+38 is out of range")


# --- the fuzz test: crafted checkpoints, data files and run folders ----------------------------------------
FUZZ_VALUES = ["", "x", -1, 0, 10**12, 1e308, float("nan"), None, [], {}, [1, "a"], True, "${oc.env:HOME}", "../../etc", [10**6, 3]]


def _paths(d, prefix=()):
    """Every key path into a nested dict (config sections and leaves)."""
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


def _mutate_checkpoint(rng, path: Path) -> str:
    """One or two random damages to the checkpoint at ``path``; returns what was done."""

    done = []
    for _ in range(rng.randint(1, 2)):
        kind = rng.choice(["drop", "drop config", "set", "set config", "tensor", "truncate", "flip"])
        if kind in ("truncate", "flip"):
            raw = bytearray(path.read_bytes())
            if kind == "truncate":
                raw = raw[: rng.randrange(len(raw))]
            else:
                for _ in range(rng.randint(1, 20)):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
            path.write_bytes(bytes(raw))
            done.append(kind)
            continue
        try:
            state = torch.load(path, weights_only=True)
        except Exception:
            continue  # already unreadable
        if kind == "drop":
            key = (rng.choice(sorted(state)),)
            state.pop(key[0])
        elif kind == "drop config":
            key = rng.choice(list(_paths(state["config"]))) if isinstance(state.get("config"), dict) else ("config",)
            node = state["config"] if key != ("config",) else state
            for k in key[:-1]:
                node = node[k]
            node.pop(key[-1] if key != ("config",) else "config", None)
        elif kind in ("set", "set config"):
            value = rng.choice(FUZZ_VALUES)
            if kind == "set" or not isinstance(state.get("config"), dict):
                key = (rng.choice(sorted(state)),)
                node = state
            else:
                key = rng.choice(list(_paths(state["config"])))
                node = state["config"]
                for k in key[:-1]:
                    node = node[k]
            node[key[-1]] = value
        else:
            weights = state.get(rng.choice(["model", "ema"]))
            if not isinstance(weights, dict) or not weights:
                continue
            name = rng.choice(sorted(weights))
            weights[name] = rng.choice([torch.zeros(3), torch.full_like(weights[name], float("inf")), weights[name].long(), torch.zeros(0)])
            key = (name,)
        torch.save(state, path)
        done.append(f"{kind} {'.'.join(map(str, key))}")
    return ", ".join(done)


def _damage_run_folder(rng, run: Path) -> str:
    """One to three random damages to a run folder."""
    damages = {
        "no config.yaml": lambda: (run / "config.yaml").unlink(),
        "no .hydra": lambda: shutil.rmtree(run / ".hydra"),
        "garbage overrides": lambda: (run / ".hydra" / "overrides.yaml").write_bytes(bytes(rng.randrange(256) for _ in range(40))),
        "overrides not a list": lambda: (run / ".hydra" / "overrides.yaml").write_text("model: unet_tiny\n"),
        "unknown override": lambda: (run / ".hydra" / "overrides.yaml").write_text("- model=unet_galactic\n"),
        "torn metrics": lambda: (run / "metrics.jsonl").open("a").write('{"step": 9, "lo'),
        "garbage metrics line": lambda: (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n'),
        "metrics a list": lambda: (run / "metrics.jsonl").write_text("[1, 2]\n[3]\n"),
        "no checkpoints": lambda: shutil.rmtree(run / "checkpoints"),
        "garbage newest checkpoint": lambda: (run / "checkpoints" / "step_00000004.pt").write_bytes(b"\x00" * 100),
        "checkpoints is a file": lambda: (shutil.rmtree(run / "checkpoints"), (run / "checkpoints").write_text("x")),
        "FAILED": lambda: (run / "FAILED").write_text("diffctl train failed: something\n"),
        "foreign newest checkpoint": lambda: torch.save({"state_dict": {}}, run / "checkpoints" / "step_00000009.pt"),
        "config.yaml garbage": lambda: (run / "config.yaml").write_text(": : :\n\t- ["),
        "samples is a file": lambda: (shutil.rmtree(run / "samples", ignore_errors=True), (run / "samples").write_text("x")),
    }
    chosen = rng.sample(sorted(damages), rng.randint(1, 3))
    for name in chosen:
        try:
            damages[name]()
        except FileNotFoundError:
            pass  # an earlier damage removed what this one needs
    return ", ".join(chosen)


def _mutate_data(rng, root: Path) -> tuple:
    """A fake dataset on disk with one random damage; returns (dataset config, what was done)."""
    from omegaconf import OmegaConf
    from test_datasets import fake_cifar, fake_mnist, write_idx

    from diffctl.config import load_option

    kind = rng.choice(["mnist", "cifar10"])
    if kind == "mnist":
        fake_mnist(root)
        raw = root / "MNIST" / "raw"
        name = rng.choice(sorted(p.name for p in raw.iterdir()))
        how = rng.choice(["truncate", "flip header", "rank", "dims", "labels", "empty"])
        data = bytearray((raw / name).read_bytes())
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        elif how == "flip header":
            data[rng.randrange(min(16, len(data)))] = rng.randrange(256)
        elif how == "rank":
            data[3] = rng.choice([0, 1, 2, 3, 4, 255])
        elif how == "dims":
            data[4:8] = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 1000]).to_bytes(4, "big")
        elif how == "labels":
            write_idx(raw / name.replace("images-idx3", "labels-idx1"), np.full(rng.choice([0, 3, 8, 24]), rng.choice([0, 9, 10, 255])))
            data = bytearray((raw / name).read_bytes())
        else:
            data = bytearray()
        (raw / name).write_bytes(bytes(data))
        return OmegaConf.merge(load_option("dataset", "mnist"), {"root": str(root)}), f"mnist {name}: {how}"
    fake_cifar(root)
    folder = root / "cifar-10-batches-py"
    name = rng.choice(["test_batch", "data_batch_3"])
    how = rng.choice(["truncate", "flip", "no labels", "wrong shape", "labels out of range", "labels too short", "not a dict", "code"])
    batch = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [1] * 6}
    if how == "no labels":
        batch.pop(b"labels")
    elif how == "wrong shape":
        batch[b"data"] = np.zeros(rng.choice([(6, 3071), (6,), (2, 3, 32, 32)]), np.uint8)
    elif how == "labels out of range":
        batch[b"labels"] = [rng.choice([-1, 10, 300])] * 6
    elif how == "labels too short":
        batch[b"labels"] = [1] * 2
    elif how == "not a dict":
        batch = [1, 2, 3]
    elif how == "code":
        batch = {b"data": _Exec(), b"labels": [1]}
    raw = bytearray(pickle.dumps(batch, protocol=2))
    if how == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif how == "flip":
        for _ in range(5):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    (folder / name).write_bytes(bytes(raw))
    return OmegaConf.merge(load_option("dataset", "cifar10"), {"root": str(root)}), f"cifar10 {name}: {how}"


class _Exec:
    def __reduce__(self):
        return (os.system, ("touch /tmp/diffctl_fuzz_pwned",))


def _check_no_loss(before: dict, root: Path) -> list:
    """Files that existed before and are gone, with their bytes nowhere under ``root`` (moving aside is allowed)."""
    now = {p for p in root.rglob("*") if p.is_file()}
    contents = None
    lost = []
    for path, data in before.items():
        if path not in now:
            contents = contents if contents is not None else {p.read_bytes() for p in now}
            if data not in contents:
                lost.append(path)
    return lost


@pytest.mark.slow
def test_fuzzed_checkpoints_data_files_and_run_folders(template, tmp_path, monkeypatch, capfd):
    """Every case ends in a one-line error or a correct result, and no case deletes a file it did not create."""
    import random

    from diffctl.cli import run_command
    from diffctl.data import load_dataset

    rng = random.Random(13)
    root = tmp_path / "outputs"
    monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    tally = {"cases": 0, "one-line error": 0, "ran": 0, "traceback": [], "misbehaved": []}

    def cli_case(what, command, args):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        capfd.readouterr()
        try:
            code = run_command(command, args)
        except BaseException as e:  # a bug's traceback
            code, err = -1, f"{type(e).__name__}: {e}"
        else:
            err = capfd.readouterr().err
        lines = err.strip().splitlines()
        tally["cases"] += 1
        if code == 2 and len(lines) == 1 and lines[0].startswith(f"diffctl {command}: error: ") and "Traceback" not in err:
            tally["one-line error"] += 1
        elif code == 0:
            tally["ran"] += 1
        else:
            tally["traceback"].append((what, command, args, code, err[-500:]))
        lost = _check_no_loss(before, tmp_path)
        if lost:
            tally["misbehaved"].append((what, command, args, "deleted", lost))

    for i in range(40):  # checkpoints
        run = root / "train" / "2026-01-01" / f"ckpt{i:03d}"
        shutil.copytree(template, run)
        what = _mutate_checkpoint(rng, run / "checkpoints" / "step_00000004.pt")
        if rng.random() < 0.5:
            cli_case(what, "sample", [f"ckpt={run}", "steps=2", "num_samples=2"])
        else:
            cli_case(what, "train", [f"resume={run}", "trainer.steps=5"])
    for i in range(30):  # run folders
        run = root / "train" / "2026-01-02" / f"run{i:03d}"
        shutil.copytree(template, run)
        what = _damage_run_folder(rng, run)
        command = rng.choice([("train", [f"resume={run}", "trainer.steps=5"]), ("sample", [f"ckpt={run}", "steps=2", "num_samples=2"]),
                              ("sample", ["ckpt=latest", "steps=2", "num_samples=2"])])
        cli_case(what, *command)
        shutil.rmtree(run)
    for i in range(60):  # data files
        folder = tmp_path / "data" / f"d{i:03d}"
        cfg, what = _mutate_data(rng, folder)
        tally["cases"] += 1
        try:
            data = load_dataset(cfg)
        except UsageError as e:
            tally["one-line error"] += 1
            assert "\n" not in str(e)
            continue
        except Exception as e:
            tally["traceback"].append((what, f"{type(e).__name__}: {e}"))
            continue
        tally["ran"] += 1
        consistent = all(len(x) == len(y) and (y.min() >= 0 and y.max() < data.num_classes if len(y) else True)
                         for x, y in ((data.train, data.train_labels), (data.test, data.test_labels)))
        if not consistent or not data.train.isfinite().all():
            tally["misbehaved"].append((what, "inconsistent dataset accepted"))
    assert not Path("/tmp/diffctl_fuzz_pwned").exists()
    print(f"\nfuzz: {tally['cases']} cases, {tally['one-line error']} one-line errors, {tally['ran']} ran, "
          f"{len(tally['traceback'])} tracebacks, {len(tally['misbehaved'])} misbehaved")
    assert not tally["traceback"], tally["traceback"][:3]
    assert not tally["misbehaved"], tally["misbehaved"][:3]
