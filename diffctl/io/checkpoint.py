"""The only place checkpoints are saved and loaded.

A checkpoint is a ``torch.save`` dict of tensors, numbers and strings (never pickled objects),
loaded with ``weights_only=True`` so loading can never execute code.  It carries its resolved
config (a plain dict) and a format version, so ``diffctl sample ckpt=...`` needs nothing else.
Writes are atomic: a temp file in the same folder, fsync, ``os.replace``, fsync of the folder; a
process killed at any moment leaves the previous checkpoint (only ``step_*.pt`` names are ever
read, never a temp file).  A failed write (disk full, quota, file size limit) is a UsageError
naming the file and the reason.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import torch

from ..errors import UsageError

FORMAT = "diffctl-checkpoint"
VERSION = 1
EXPORT_FORMAT, EXPORT_WEIGHTS, EXPORT_CONFIG = "diffctl-export", "model.safetensors", "diffctl.json"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save_checkpoint(path: Path, state: dict) -> Path:
    """Atomically write ``state`` (plus format and version) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".*.tmp-*"):  # our own temp files (".<checkpoint name>.tmp-<pid>") left by a process killed mid-write
        target = stale.name[1:].rsplit(".tmp-", 1)[0]
        if (target == path.name or _NAME.match(target)) and _writer_gone(stale):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buffer = io.BytesIO()  # serialised first, so a failed write is the OS's own error (ENOSPC, EFBIG), not torch's zip writer's
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except OSError as e:
        raise UsageError(f"could not write checkpoint {path}: {e.strerror or e} (disk full or quota?); nothing was replaced") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _writer_gone(tmp: Path) -> bool:
    """Whether the process that wrote temp file ``tmp`` (its pid is in the name) no longer runs here."""
    try:
        pid = int(tmp.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (its directory entry survives a power loss)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder: the rename itself is done
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a diffctl checkpoint safely (or an export: its folder or its .safetensors file); a truncated, corrupt
    or foreign file is a UsageError."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        return load_export(path if path.is_dir() else path.parent)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle it then refuses: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"checkpoint not found: {path}") from None
    except Exception as e:  # truncated zip, pickle with code, not a torch file at all
        first = re.split(r"(?<=[a-z)])\. ", str(e).strip().splitlines()[0])[0].rstrip(".") if str(e).strip() else ""  # its first sentence
        if len(first) > 160:  # whole words, never a cut one
            first = first[:160].rsplit(" ", 1)[0] + " ..."
        detail = f" ({first})" if len(first) > 12 else ""  # skip bare codes such as an unpickler's byte value
        raise UsageError(f"cannot read checkpoint {path}: not a valid diffctl checkpoint{detail}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not a diffctl checkpoint")
    if state.get("version", 0) > VERSION:
        raise UsageError(f"{path} has checkpoint format {state['version']}; this diffctl reads up to {VERSION}: upgrade diffctl")
    return state


# What a checkpoint must hold, by use: sampling / evaluation, and resuming training.
TRAINED = {"step": int, "config": dict, "data_shape": list, "model": dict}
RESUMABLE = {**TRAINED, "ema": dict, "ema_updates": int, "optimizer": dict, "lr_scheduler": dict, "scaler": dict, "rng": dict}


def require(state: dict, path: Path, keys: dict) -> None:
    """A UsageError naming the first of ``keys`` that ``state`` lacks or holds with a wrong type."""
    for key, kind in keys.items():
        if key not in state:
            raise UsageError(f"{path}: incomplete diffctl checkpoint (no {key!r}); it cannot be used")
        value = state[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f"{path}: malformed diffctl checkpoint ({key!r} is {type(value).__name__}, not {kind.__name__})")
    if not isinstance(state.get("num_classes", 0), int):
        raise UsageError(f"{path}: malformed diffctl checkpoint ('num_classes' is {type(state['num_classes']).__name__}, not int)")
    shape = state.get("data_shape", [1])
    if not (1 <= len(shape) <= 3 and all(isinstance(d, int) and 1 <= d <= 65536 for d in shape)):
        raise UsageError(f"{path}: malformed diffctl checkpoint (data_shape {shape!r})")
    for name in ("model", "ema"):
        if isinstance(state.get(name), dict) and not all(isinstance(v, torch.Tensor) for v in state[name].values()):
            raise UsageError(f"{path}: malformed diffctl checkpoint ({name!r} holds something other than tensors)")
    for group in ("model", "schedule", "dataset"):
        if "config" in state and not isinstance(state["config"].get(group), dict):
            raise UsageError(f"{path}: malformed diffctl checkpoint (its config has no {group} section)")


def inert_config(config: dict):
    """A checkpoint's config as a DictConfig that is data only: strings that look like OmegaConf
    interpolations (``${oc.env:...}``) are escaped, so no resolver ever runs on what a file says."""
    import re

    from omegaconf import OmegaConf

    def escape(v):
        if isinstance(v, str):
            return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", v)  # n backslashes + ${ -> 2n + 1: the literal text
        if isinstance(v, dict):
            return {k: escape(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [escape(x) for x in v]
        return v

    return OmegaConf.create(escape(config))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder`` ordered by step (oldest first)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints."""
    for old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)


# --- exports: weights that leave diffctl ---------------------------------------------------------
RECORDED = ("step", "config", "data_shape", "num_classes", "data_levels", "latent", "cond")  # what an export keeps of its checkpoint
MAX_EXPORT_BYTES = 64 << 30  # model.safetensors: its header is checked against the file's size before anything is read


def save_export(folder: Path, state: dict, ema: bool = True, weights_elsewhere: str = "") -> list[Path]:
    """A trained checkpoint's weights (the EMA's unless ``ema`` is False) as ``model.safetensors``, beside
    ``diffctl.json``: the training config, data shape, classes, pixel levels, step, and what a latent or conditioned model
    needs to rebuild itself (its autoencoder, its condition's record), from which diffctl (or anyone reading
    docs/architecture.md) rebuilds the network.  No optimiser state, nothing pickled.  Both files are written atomically
    into ``folder``, which the caller has made (``diffctl export`` writes only into a run folder it created).
    ``weights_elsewhere``: the caller writes the weights in another format (named in the record) and only
    the record is written here.  Returns the files written."""
    import json

    from safetensors.torch import save

    from .files import write_atomic

    which = "ema" if ema and state.get("ema") is not None else "model"
    folder = Path(folder)
    weights, meta = folder / EXPORT_WEIGHTS, folder / EXPORT_CONFIG
    if not weights_elsewhere:
        write_atomic(weights, save({k: v.contiguous() for k, v in state[which].items()}, metadata={"format": EXPORT_FORMAT, "weights": which}),
                     "diffctl export")
    record = {"format": EXPORT_FORMAT, "version": VERSION, "weights": f"{which}{weights_elsewhere}",
              **{k: state.get(k) for k in RECORDED if k in state or k in ("num_classes", "data_levels")}}
    record["num_classes"] = record.get("num_classes") or 0
    write_atomic(meta, json.dumps(record, indent=2) + "\n", "diffctl export")
    return [meta] if weights_elsewhere else [weights, meta]


def read_export_record(folder: Path) -> dict:
    """An export folder's ``diffctl.json``, read by the bounded reader: a JSON object of format diffctl-export whose
    records are of the types a checkpoint holds them in; anything else is a UsageError."""
    from .files import read_json

    meta = Path(folder) / EXPORT_CONFIG
    record = read_json(meta, f"the export record {meta}", object)
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise UsageError(f"{meta} is not a diffctl export record")
    version = record.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise UsageError(f"{folder} has export format {version!r}; this diffctl reads up to {VERSION}: upgrade diffctl")
    for key, kind in (("latent", dict), ("cond", dict), ("data_levels", int)):
        if record.get(key) is not None and (not isinstance(record[key], kind) or isinstance(record[key], bool)):
            raise UsageError(f"{meta}: malformed export record ({key!r} is {type(record[key]).__name__}, not {kind.__name__})")
    return record


def load_export(folder: Path) -> dict:
    """An export folder as a checkpoint state that ``load_trained`` reads (its weights as ``model``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from .files import read_bytes

    weights, meta = Path(folder) / EXPORT_WEIGHTS, Path(folder) / EXPORT_CONFIG
    if not weights.is_file() or not meta.is_file():
        raise UsageError(f"{folder} is not a diffctl export (it needs {EXPORT_WEIGHTS} and {EXPORT_CONFIG}; make one with diffctl export)")
    record = read_export_record(folder)
    try:
        model = load(read_bytes(weights, "diffctl export", MAX_EXPORT_BYTES))  # safetensors checks every offset against the bytes
    except (ValueError, OSError, SafetensorError) as e:
        raise UsageError(f"cannot read the export {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return {"format": FORMAT, "version": VERSION, "model": model, "ema": None, **{k: record.get(k) for k in RECORDED if record.get(k) is not None}}
