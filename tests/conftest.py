import contextlib
import os
import subprocess
import sys
from pathlib import Path

# Set before torch loads OpenMP (read once, at load): a test that asks for 2 threads shares the 2 cores with the other
# xdist worker, and OpenMP's default of spinning at each barrier then waits for a thread that is not running (the README
# example at 2 threads beside a busy process: 47 s, 32 s with passive waits).  The diffctl processes the tests start
# inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# One CPU thread per test process, and for the diffctl processes it starts (they inherit the variable): on 2 cores, torch's
# default of a thread per core oversubscribes them whenever two processes run (a test and its CLI child, two xdist workers).
# A test about threads sets its own (threads=N, or OMP_NUM_THREADS in a child's environment).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

TINY_TRAIN = [
    "model=unet_tiny", "trainer.steps=4", "trainer.batch_size=8", "trainer.ckpt_every=2", "trainer.sample_every=2",
    "trainer.sample_steps=3", "trainer.num_grid=4", "trainer.log_every=1", "optim.warmup_steps=1",
]


SMALL = ["model=unet_tiny", "trainer.batch_size=8", "trainer.sample_every=0", "trainer.num_grid=4", "trainer.sample_steps=2",
         "optim.warmup_steps=2"]


# The tiny runs the tests share, each trained once per test session (for all pytest-xdist workers together) on first use;
# "{name}" in an override is the folder of that shared run.  A test takes a private copy (the ``trained`` fixture).
TINY_RUN = [*TINY_TRAIN, "trainer.sample_every=0", "trainer.eval_every=0"]  # 4 steps, checkpoints at 2 and 4
TINY_AE = ["task=autoencoder", "autoencoder.downsample=2", "autoencoder.channels=8", "trainer.steps=4", "trainer.batch_size=16",
           "trainer.sample_every=0", "trainer.log_every=2", "trainer.eval_every=0", "optim.warmup_steps=1"]
SHARED = {
    "pixel": TINY_RUN,
    "text": [*TINY_RUN, "cond=text"],
    "class": [*TINY_RUN, "cond=class"],
    "superres": [*TINY_RUN, "task=superres"],
    "autoencoder": TINY_AE,
    "latent": [*TINY_RUN, "latent.autoencoder={autoencoder}"],
}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped without one."""
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """On a machine with a GPU, a test not marked ``cuda`` runs as on a CPU machine (device=auto resolves to the CPU, in
    this process and in the subprocesses it starts): its expectations (bit-exact resumes, draws recomputed on CPU) are
    CPU facts; the GPU paths have tests of their own, marked ``cuda``."""
    if "cuda" not in request.keywords and torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def make_trainer(run_dir, *overrides):
    """An in-process Trainer on the composed train config with SMALL and ``overrides``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from diffctl.config import register_schemas
    from diffctl.trainer import Trainer

    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_module("diffctl.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*SMALL, *overrides])
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, run_dir)


def logged_losses(run_dir: Path) -> list:
    """(step, loss, lr, grad_norm) of every line of a run's metrics.jsonl."""
    import json

    records = map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in records if "event" not in r]


def _session_folder(tmp_path_factory, name: str) -> Path:
    """A folder of this test session, shared by its pytest-xdist workers (the parent of their base temps)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Shared across the session (and its workers) so that the reference classifier is trained about once."""
    return _session_folder(tmp_path_factory, "cache")


class SharedRuns:
    """The runs of ``SHARED``, trained in this process on first use under a file lock, so once for all workers."""

    def __init__(self, folder: Path, cache: Path):
        self.folder, self.cache = folder, cache

    def __getitem__(self, name: str) -> Path:
        import re

        from filelock import FileLock

        done = self.folder / f"{name}.path"
        with FileLock(str(self.folder / f"{name}.lock")):
            if not done.exists():
                needs = {n: self[n] for n in re.findall(r"\{(\w+)\}", " ".join(SHARED[name]))}
                done.write_text(str(train_in_process(self.folder / name, *[a.format(**needs) for a in SHARED[name]],
                                                     f"paths.cache_dir={self.cache}")))
        return Path(done.read_text())


def train_in_process(root: Path, *args) -> Path:
    """One ``diffctl train`` in this process with its output root ``root``; its run folder."""
    from diffctl.cli import LAST_RUNS, run_command

    with pytest.MonkeyPatch.context() as m, _torch_state_kept():
        m.setenv("DIFFCTL_OUTPUT_ROOT", str(root))
        LAST_RUNS.clear()
        assert run_command("train", list(args)) == 0, args
        return LAST_RUNS[-1]


@contextlib.contextmanager
def _torch_state_kept():
    """Torch's CPU threads and global RNG as they were before a command run in this process (threads= sets them)."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory, cache_dir) -> SharedRuns:
    return SharedRuns(_session_folder(tmp_path_factory, "runs"), cache_dir)


@pytest.fixture
def trained(shared_runs, tmp_path):
    """``trained(name)``: a private copy of the shared run ``name`` under this test's output root, at
    outputs/train/<date>/<time> like the runs a test trains itself (copying is cheap; training is not)."""
    import shutil

    def copy(name: str) -> Path:
        src = shared_runs[name]
        dest = tmp_path / "outputs" / "train" / src.parent.name / src.name
        shutil.copytree(src, dest)
        return dest

    return copy


PATHED = ("train", "sample", "eval", "inspect-schedule", "export")  # the commands that take paths.cache_dir=


@pytest.fixture
def diffctl(tmp_path, cache_dir, monkeypatch, capfd):
    """The real CLI with a temp output root; returns a CompletedProcess (args, returncode, stdout, stderr).

    It runs ``diffctl.cli.main`` in this process (a subprocess spends 3-5 s importing torch, sklearn and Hydra before it
    starts): the environment, working folder, argv, torch's threads and global RNG are set for the call and restored after
    it, and a bug's traceback becomes exit code 1 with the traceback on stderr, as in a process.  ``subprocess=True``
    runs ``python -m diffctl`` instead, for the tests whose point is the process boundary (exit codes of the console
    script, signals, environment)."""
    root = tmp_path / "outputs"

    def run(*args, check=True, cwd=None, subprocess=False):
        args = list(args)
        if args and args[0] in PATHED and not {"--help", "--hydra-help", "--cfg"} & set(args):
            args.append(f"paths.cache_dir={cache_dir}")
        proc = _subprocess(args, root, cwd or tmp_path) if subprocess else _in_process(args, root, cwd or tmp_path, monkeypatch, capfd)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    run.root = root
    return run


def _subprocess(args, root, cwd):
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "diffctl", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _in_process(args, root, cwd, monkeypatch, capfd):
    import traceback

    from diffctl.cli import main

    with monkeypatch.context() as m, _torch_state_kept():
        m.setenv("DIFFCTL_OUTPUT_ROOT", str(root))
        m.delenv("HYDRA_FULL_ERROR", raising=False)
        m.chdir(cwd)
        m.setattr(sys, "argv", ["diffctl", *args])
        capfd.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except Exception:  # a bug: what the interpreter would print, and its exit code
            traceback.print_exc()
            code = 1
        out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["diffctl", *args], code, out, err)


def run_folder(proc) -> Path:
    """The run folder a command printed last."""
    lines = [l for l in proc.stdout.splitlines() if l.startswith("run folder: ")]
    assert lines, proc.stdout + proc.stderr
    return Path(lines[-1].split(": ", 1)[1])


@pytest.fixture
def cli(tmp_path, monkeypatch, capfd):
    """The real CLI entry point in this process (for fast checks of failures): (exit code, stdout, stderr).

    Shares the output root with the ``diffctl`` fixture, so it sees the runs that one made."""
    from diffctl.cli import run_command

    monkeypatch.setenv("DIFFCTL_OUTPUT_ROOT", str(tmp_path / "outputs"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(command, *args):
        capfd.readouterr()
        code = run_command(command, list(args))
        out, err = capfd.readouterr()
        return code, out, err

    return run


def assert_one_line_error(result, command: str, message: str) -> None:
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in out + err, (code, out, err)
    assert lines[0].startswith(f"diffctl {command}: error: ") and message in lines[0], lines[0]
