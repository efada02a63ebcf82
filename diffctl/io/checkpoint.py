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
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save_checkpoint(path: Path, state: dict) -> Path:
    """Atomically write ``state`` (plus format and version) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".*.tmp-*"):  # left by a process killed mid-write
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
    """Load a diffctl checkpoint safely; a truncated, corrupt or foreign file is a UsageError."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle it then refuses: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"checkpoint not found: {path}") from None
    except Exception as e:  # truncated zip, pickle with code, not a torch file at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        detail = f" ({first[:160]})" if len(first) > 12 else ""  # skip bare codes such as an unpickler's byte value
        raise UsageError(f"cannot read checkpoint {path}: not a valid diffctl checkpoint{detail}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not a diffctl checkpoint")
    if state.get("version", 0) > VERSION:
        raise UsageError(f"{path} has checkpoint format {state['version']}; this diffctl reads up to {VERSION}: upgrade diffctl")
    return state


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
