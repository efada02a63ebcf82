"""What lets a training run continue: the checkpoint to resume from, the checks that it is the same
run, the RNG states that make the continuation exact, and stopping on a signal at a step boundary."""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import UsageError
from .io.checkpoint import list_checkpoints
from .io.rundir import ABANDONED, CKPT_DIR, MetricsLog

log = logging.getLogger("diffctl.train")


RUN_DEFINING = ("task", "dataset", "model", "schedule", "loss", "optim", "latent")  # what a resumed run may not change...
RECOVERABLE = ("optim.lr", "model.lr")  # ...but this: lowering the learning rate is the recovery from a divergence
# Options that change the trajectory from the resume point on: a resume that changes one starts a new branch.
BRANCHING = ("optim.lr", "trainer.grad_clip", "trainer.precision", "trainer.batch_size", "trainer.ema_decay", "trainer.cond_drop_prob")
_OLD_DEFAULTS = {"task": "diffusion"}  # for checkpoints written before a key existed
# Config keys that name another run's checkpoint, and the tasks that run may be.  'latest' and a run folder move as runs
# are trained, so each is resolved once, when a run starts: the checkpoint records the file and its SHA-256, and a resumed
# run takes that file again (it may not change: the latent space, the frozen base).
REFERENCES = {"base": ("diffusion",), "latent.autoencoder": ("autoencoder",)}


def _with_defaults(saved: dict) -> dict:
    """A checkpoint's config with the options added to its choices since it was written, at their defaults
    (what that run trained with); options that no longer exist stay, so a run that used one is not resumed."""
    from .config import GROUPS, option_schema

    out = dict(saved)
    for group, (registry, _) in GROUPS.items():
        node = saved.get(group)
        if isinstance(node, dict) and node.get(registry.key) in registry:
            out[group] = {**OmegaConf.to_container(OmegaConf.structured(option_schema(group, node[registry.key]))), **node}
    return out


def _flat(d, prefix=""):
    for k, v in d.items():
        yield from _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]


def check_same_run(saved: dict, cfg: DictConfig, path: Path) -> dict:
    """Resuming continues a run: its data, model, schedule, loss and optimiser must be the same (the
    learning rate excepted).  Returns the BRANCHING options that changed, ``{key: (before, now)}``."""
    current = OmegaConf.to_container(cfg, resolve=True)
    saved = _with_defaults(saved)
    defining = RUN_DEFINING + (("autoencoder",) if current.get("task") == "autoencoder" else ())
    old = dict(_flat({k: saved.get(k, _OLD_DEFAULTS.get(k, {})) for k in defining}))
    new = dict(_flat({k: current[k] for k in defining}))
    keys = sorted(set(old) | set(new), key=lambda k: (not k.endswith((".name", ".arch")), k))  # a changed option first
    # (a reference to another run is compared by the file it names: pin_references)
    diffs = [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in keys if old.get(k) != new.get(k) and k not in RECOVERABLE + tuple(REFERENCES)]
    if diffs:
        raise UsageError(f"cannot resume from {path}: it was trained with {', '.join(diffs[:3])}; use the run's own overrides "
                         f"(resume=<run folder> reuses them) or start a new run")
    old = dict(_flat({k: saved.get(k, {}) for k in ("optim", "trainer")}))
    new = dict(_flat({k: current[k] for k in ("optim", "trainer")}))
    return {k: (old[k], new[k]) for k in BRANCHING if k in old and old[k] != new[k]}


def _recorded_references(saved: dict) -> dict:
    """``{key: {"spec", "file", "sha256"}}`` of a checkpoint (from its latent and ControlNet records if it predates them)."""
    if isinstance(saved.get("references"), dict):
        return saved["references"]
    config, out = saved.get("config") or {}, {}
    latent, cond = saved.get("latent"), saved.get("cond")
    if isinstance(latent, dict) and "autoencoder" in latent:
        out["latent.autoencoder"] = {"spec": (config.get("latent") or {}).get("autoencoder"), "file": latent["autoencoder"], "sha256": latent.get("sha256")}
    if isinstance(cond, dict) and cond.get("base"):
        out["base"] = {"spec": config.get("base"), "file": cond["base"], "sha256": cond.get("base_sha256")}
    return out


def pin_references(cfg: DictConfig, saved: dict | None, path: Path | None = None) -> dict:
    """Resolve each REFERENCES key of ``cfg`` to a checkpoint file, once: in a new run, what it names now; in a run resumed
    from ``saved`` (the checkpoint at ``path``), the file that checkpoint recorded for the same spec, which must still be
    there, unchanged.  A spec that now names another file, or a file whose content changed, is a one-line error.  ``cfg``'s
    values become the absolute files; returns ``{key: {"spec", "file", "sha256"}}`` for the checkpoint."""
    from .io.files import file_sha256
    from .io.rundir import resolve_checkpoint

    recorded = _recorded_references(saved) if saved is not None else {}
    pinned = {}
    for key, tasks in REFERENCES.items():
        spec = OmegaConf.select(cfg, key)
        before = recorded.get(key)
        if not spec:  # (a resumed run that drops one is refused by what needs it: its task, its latent space)
            continue
        if before is not None and str(spec) == str(before["spec"]):
            file = Path(before["file"])  # what this run's spec meant when it started, whatever it names now
            if not file.is_file():
                raise UsageError(f"cannot resume from {path}: it was trained with {key}={spec}, which was {file}, and that file is "
                                 f"not there any more (moved or deleted); put it back or start a new run")
        else:
            file = resolve_checkpoint(str(spec), Path(cfg.paths.output_root), key=key, tasks=tasks).resolve()
        sha256 = file_sha256(file)
        if before is not None and (str(file) != str(before["file"]) or (before.get("sha256") and sha256 != before["sha256"])):
            what = "has changed since (SHA-256 mismatch)" if str(file) == str(before["file"]) else f"is now {file}"
            raise UsageError(f"cannot resume from {path}: it was trained with {key}={before['file']}, and {key}={spec} {what}; the "
                             f"run's {key} may not change on resume: start a new run")
        OmegaConf.update(cfg, key, str(file))
        pinned[key] = {"spec": str(spec), "file": str(file), "sha256": sha256}
    return pinned


def _step_of(path: Path) -> int:
    """The step in a checkpoint or snapshot name (``step_00000200.pt``, ``accuracy_00000200.png``); -1 if none."""
    try:
        return int(path.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def continue_run(run_dir: Path, metrics: MetricsLog, step: int, branch: int, changed: dict, source: Path) -> int:
    """Make the run folder hold one history that continues at ``step``; returns the branch number of
    what is logged from now on.

    Resuming from the newest checkpoint continues the branch: log records past ``step`` (a process killed
    after logging them) are dropped, since the resumed run logs them again exactly.  Resuming from an
    older checkpoint, or with an option that changes the trajectory (BRANCHING), starts a new branch:
    the old branch's later checkpoints, pictures and log records move to
    ``abandoned/<time>_after_step_<step>/`` (kept, never found by resume or ``ckpt=`` again), and
    metrics.jsonl gets a record ``{"event": "branch", ...}`` saying where and why; every later record
    carries the new branch's number."""
    records = metrics.read()
    kept = [r for r in records if r.get("step", 0) <= step]
    later_ckpts = [p for p in list_checkpoints(run_dir / CKPT_DIR) if _step_of(p) > step]
    if not later_ckpts and not changed:
        metrics.rewrite(kept)
        return branch
    new = 1 + max([branch, *(r.get("branch", 0) for r in records if isinstance(r.get("branch", 0), int))])
    later_pics = [p for p in (run_dir / "samples").glob("*.png") if _step_of(p) > step]
    later = [r for r in records if r.get("step", 0) > step]
    why = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
    abandoned = None
    if later_ckpts or later_pics or later:
        abandoned = run_dir / ABANDONED / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_after_step_{step}"
        i = 0
        while abandoned.exists():
            i += 1
            abandoned = abandoned.with_name(f"{abandoned.name.split('__')[0]}__{i}")
        abandoned.mkdir(parents=True)
        MetricsLog(abandoned / "metrics.jsonl").rewrite(later)
    metrics.rewrite(kept + [{"step": step, "event": "branch", "branch": new, "resumed_from": str(source),
                             "changed": {k: list(v) for k, v in changed.items()},
                             "abandoned": str(abandoned.relative_to(run_dir)) if abandoned else None, "time": round(time.time(), 3)}])
    for files, sub in ((later_ckpts, CKPT_DIR), (later_pics, "samples")):  # last: until now, a failure left the folder as it was
        for f in files:
            (abandoned / sub).mkdir(exist_ok=True)
            f.rename(abandoned / sub / f.name)
    log.warning("branch %d starts at step %d%s%s", new, step, f" ({why})" if why else "",
                f"; what the previous branch did after step {step} is kept in {abandoned}" if abandoned else "")
    return new


def rng_state() -> dict:
    """The global RNGs (dropout draws from them); a step's data comes from ``step_seed`` instead."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``; a CUDA run resumed on CPU keeps only the CPU state (and a CPU run on CUDA starts CUDA's)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s data draws in a run seeded ``seed``: a 64-bit hash of the two, so no two
    (seed, step) pairs share a stream (CPU generators use its low 32 bits, CUDA's all 64)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=8).digest(), "little") >> 1


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
