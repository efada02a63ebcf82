"""Run folders: where they are, what they hold, and how ``ckpt=`` finds a checkpoint."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UsageError
from .checkpoint import EXPORT_WEIGHTS, list_checkpoints
from .files import MAX_JSON_BYTES, parse_json, read_bytes, write_json  # noqa: F401  (write_json: the commands' writer of reports)

CKPT_DIR = "checkpoints"
ABANDONED = "abandoned"  # a run folder's branches that a resume from an older checkpoint left behind
log = logging.getLogger("diffctl")


RUN_DIRS_ENV = "DIFFCTL_RUN_DIRS"  # the folders this command created (inherited by a launcher's worker processes)


def new_run_dir(root: str, command: str) -> str:
    """``<root>/<command>/<date>/<time>``, created here with an exclusive mkdir, so two runs started in
    the same second never share a folder: the second gets ``<time>_1`` (the Hydra resolver
    ``diffctl_run_dir``).  Memoised within one command, so every resolution gives the same path.  The
    folder is recorded as this command's own (``owned``), and so are the date and command folders it
    had to make: only those may ever be removed again."""
    import datetime

    if not str(root).strip():
        raise UsageError("paths.output_root is empty (or DIFFCTL_OUTPUT_ROOT is set to ''): give a folder for the run folders, e.g. outputs")
    parent = f"{root}/{command}"
    if parent in new_run_dir.created:
        return new_run_dir.created[parent]
    now = datetime.datetime.now()
    day = Path(parent) / now.strftime("%Y-%m-%d")
    i = 0
    while True:
        _make_parents(day)
        path = day / (now.strftime("%H-%M-%S") + (f"_{i}" if i else ""))
        try:
            path.mkdir()
            break
        except FileExistsError:
            i += 1
        except FileNotFoundError:  # a failed run just removed the (then empty) date folder: make it again
            pass
    new_run_dir.created[parent] = str(path)
    os.environ[RUN_DIRS_ENV] = os.pathsep.join(new_run_dir.created.values())
    return str(path)


def _make_parents(folder: Path) -> None:
    """``mkdir -p folder``, remembering which folders did not exist before (``new_run_dir.made``)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir()
            new_run_dir.made.append(p)
        except FileExistsError:
            pass


new_run_dir.created, new_run_dir.made = {}, []


def forget_run_dirs() -> None:
    """A new command starts owning nothing."""
    new_run_dir.created.clear()
    new_run_dir.made.clear()
    os.environ.pop(RUN_DIRS_ENV, None)


def owned(folder: Path) -> bool:
    """Whether ``folder`` is (or lies inside) a run folder this command created: the only folders it may remove."""
    folder = Path(folder).absolute()
    mine = [Path(p).absolute() for p in os.environ.get(RUN_DIRS_ENV, "").split(os.pathsep) if p]
    return any(folder == p or p in folder.parents for p in mine)


def remove_made_parents(run_dir: Path) -> None:
    """After removing ``run_dir``: the date and command folders this command made for it, if now empty."""
    for folder in sorted((p for p in new_run_dir.made if p in Path(run_dir).parents), key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except OSError:
            break


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write the resolved config as ``config.yaml``."""
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run_task(run_dir: Path) -> str:
    """What a train run folder trains (its config's ``task``): diffusion, or classifier."""
    import yaml

    try:
        cfg = yaml.safe_load(read_bytes(Path(run_dir) / "config.yaml", "config.yaml", 1 << 20)) or {}
    except (UsageError, yaml.YAMLError, RecursionError):
        cfg = {}
    return cfg.get("task", "diffusion") if isinstance(cfg, dict) else "diffusion"


SAMPLING = ("diffusion", "superres", "controlnet")  # the tasks whose runs sample: what ckpt=latest means


def train_runs(output_root: Path, tasks: tuple = SAMPLING, failed: bool = False) -> list[Path]:
    """Train run folders of one of ``tasks`` under ``output_root`` (single runs and sweep jobs) with a checkpoint,
    newest first; runs marked FAILED only when ``failed``."""
    root = Path(output_root) / "train"
    if not root.is_dir():
        return []
    runs = {p.parent.parent for p in root.rglob(f"{CKPT_DIR}/step_*.pt") if ABANDONED not in p.relative_to(root).parts}
    runs = [r for r in runs if run_task(r) in tasks and (failed or not (r / "FAILED").exists())]
    return sorted(runs, key=lambda p: max(c.stat().st_mtime for c in list_checkpoints(p / CKPT_DIR)), reverse=True)


def resolve_checkpoint(spec: str, output_root: Path, key: str = "ckpt", tasks: tuple = SAMPLING) -> Path:
    """``ckpt=`` (or another ``key``) -> a checkpoint file: a file, a run folder (its newest), or
    ``latest``: the newest train run of one of ``tasks`` not marked FAILED (so a classifier run is never a
    diffusion model's latest, and a run that failed is used only when named)."""
    if spec == "latest":
        runs = train_runs(output_root, tasks)
        if not runs:
            failed = train_runs(output_root, tasks, failed=True)
            if failed:
                raise UsageError(f"{key}=latest: the train runs with checkpoints under {Path(output_root) / 'train'} are marked FAILED "
                                 f"(newest: {failed[0]}, see its FAILED file); pass {key}=<that folder> to use it anyway")
            kind = "" if tasks == SAMPLING else " or ".join(f"task={t}" for t in tasks) + " "
            command = "diffctl train" + (f" task={tasks[0]}" if tasks[0] != "diffusion" else "")
            raise UsageError(f"{key}=latest: no {kind}train run with a checkpoint under {Path(output_root) / 'train'}; "
                             f"run '{command}' first or pass {key}=<file|run folder>")
        return list_checkpoints(runs[0] / CKPT_DIR)[-1]
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    run = path.is_dir() and list_checkpoints(path / CKPT_DIR)  # a run folder is its checkpoints, whatever else lies in it
    if not run and path.is_dir() and ((path / EXPORT_WEIGHTS).is_file() or (path / "unet" / "config.json").is_file()):  # an export, a diffusers folder
        return path
    if path.is_dir():
        ckpts = list_checkpoints(path / CKPT_DIR) or list_checkpoints(path)
        if not ckpts:
            raise UsageError(f"{key}={spec}: no checkpoints in this folder (expected {CKPT_DIR}/step_*.pt)")
        return ckpts[-1]
    raise UsageError(f"{key}={spec}: no such file or folder (give a checkpoint file, a run folder, an export folder or 'latest')")


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line.

    Each line is appended with one ``write`` on an ``O_APPEND`` descriptor; a write that fails (a full
    disk) is undone by truncating back, so the file never keeps half a line from us.  A torn last line
    left by an older version or a crash is reported and ignored when the log is read."""

    def __init__(self, path: Path, branch: int = 0):
        self.path, self.branch = Path(path), branch  # branch: written into every record

    def read(self) -> list[dict]:
        """The records, without a torn last line (reported once, then dropped at the next rewrite)."""
        if not self.path.exists():
            return []
        lines = read_bytes(self.path, "metrics log", 16 * MAX_JSON_BYTES).decode(errors="replace").splitlines()
        records = []
        for i, line in enumerate(lines):
            try:
                record = parse_json(line, f"{self.path}: line {i + 1}", dict)
            except UsageError:
                if i == len(lines) - 1:
                    log.warning("%s: its last line is torn (a write was cut short, e.g. by a full disk): ignored", self.path)
                    break
                raise UsageError(f"{self.path}: line {i + 1} is not a JSON record; fix or remove that line") from None
            records.append(record)
        return records

    def rewrite(self, records: list[dict]) -> None:
        """Replace the log by ``records`` atomically."""
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"could not rewrite {self.path}: {e.strerror or e}; it is as before") from None

    def write(self, **record) -> None:
        record.setdefault("branch", self.branch)
        record.setdefault("time", round(time.time(), 3))
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(28, "short write (disk full?)")
            except OSError as e:
                os.ftruncate(fd, size)
                raise UsageError(f"could not append to {self.path}: {e.strerror or e} (disk full or quota?); the log is as before") from None
        finally:
            os.close(fd)


class RunLock:
    """An exclusive lock on a run folder while a process trains in it (``flock`` on ``.diffctl.lock``:
    the kernel drops it when the process dies, even by kill -9, so it is never left stuck).  A second
    process is refused with who holds it."""

    NAME = ".diffctl.lock"

    def __init__(self, run_dir: Path):
        self.path, self.fd = Path(run_dir) / self.NAME, None

    def __enter__(self) -> "RunLock":
        import fcntl
        import socket
        import sys

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                h = json.loads(holder)
                who = f"pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']}"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise UsageError(f"{self.path.parent} is being trained by {who}; wait for it to finish or stop it "
                             f"(two processes on one run would mix their checkpoints and logs)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)[:300]}).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

