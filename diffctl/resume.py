"""What lets a training run continue: the checkpoint to resume from, the checks that it is the same
run, the RNG states that make the continuation exact, and stopping on a signal at a step boundary."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import UsageError
from .io.checkpoint import list_checkpoints
from .io.rundir import CKPT_DIR

log = logging.getLogger("diffctl.train")


RUN_DEFINING = ("task", "dataset", "model", "schedule", "loss", "optim")  # what a resumed run may not change
_OLD_DEFAULTS = {"task": "diffusion"}  # for checkpoints written before a key existed


def check_same_run(saved: dict, cfg: DictConfig, path: Path) -> None:
    """Resuming continues a run: its data, model, schedule, loss and optimiser must be the same."""
    current = OmegaConf.to_container(cfg, resolve=True)

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    old = dict(flat({k: saved.get(k, _OLD_DEFAULTS.get(k, {})) for k in RUN_DEFINING}))
    new = dict(flat({k: current[k] for k in RUN_DEFINING}))
    keys = sorted(set(old) | set(new), key=lambda k: (not k.endswith((".name", ".arch")), k))  # a changed option first
    diffs = [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in keys if old.get(k) != new.get(k)]
    if diffs:
        raise UsageError(f"cannot resume from {path}: it was trained with {', '.join(diffs[:3])}; use the run's own overrides "
                         f"(resume=<run folder> reuses them) or start a new run")


def rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``resume=auto`` looks in this run folder."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        found = list_checkpoints(run_dir / CKPT_DIR)
        return found[-1] if found else None
    path = Path(cfg.resume).expanduser()
    found = [path] if path.is_file() else list_checkpoints(path / CKPT_DIR)
    if not found:
        raise UsageError(f"resume={cfg.resume}: no checkpoint there (give auto, never, a run folder or a checkpoint file)")
    return found[-1]


class StopRequest:
    """While active, SIGINT / SIGTERM only set ``signum``: the loop finishes its step, checkpoints and
    stops.  A second signal aborts at once (KeyboardInterrupt).  Inactive outside the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.saved = None, {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing this step and writing a checkpoint (send it again to abort at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.saved.items():
            signal.signal(s, handler)
