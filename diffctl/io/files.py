"""The one reader and the one writer of the small files diffctl takes from users and leaves for them.

Every file diffctl reads from a user (a run's records, an export's ``diffctl.json``, a caption file, a
diffusers or CLIP folder's configs, a latent cache) is untrusted.  ``read_bytes`` opens it without
blocking (a FIFO or a device named like a data file is refused, never waited on), refuses what is not a
regular file and what is larger than the caller's bound; ``read_json`` / ``json_lines`` then parse it
with a bound on nesting (a file of 100,000 brackets is one line, not a RecursionError) and the type the
caller expects at the top.  Every failure is a ``UsageError`` naming the file and what is wrong.

``write_atomic`` is the writer: a temp file of a name no other process uses (pid and a random part),
fsync, ``os.replace``; a failed write (full disk, quota, read-only folder) leaves the target as it was,
removes its temp file, and is one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path

from ..errors import UsageError

MAX_JSON_BYTES = 64 << 20  # a record, a config or a metrics log: far beyond any real one
MAX_DEPTH = 64  # nesting of a JSON document (diffctl's own deepest: a config inside a record, ~6)


def file_sha256(path) -> str:
    """The SHA-256 of a file's content, read in blocks (a checkpoint may not fit in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_bytes(path, what: str, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``); a FIFO, a folder, a device, a missing or an
    unreadable file, or one over the bound, is a UsageError that starts with ``what``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, not even on a FIFO without a writer
    except OSError as e:
        raise UsageError(f"{what}: cannot read {path} ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what}: {path} is not a regular file")
        if info.st_size > max_bytes:
            raise UsageError(f"{what}: {path} is {info.st_size:,} bytes; at most {max_bytes:,} are read")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise UsageError(f"{what}: cannot read {path} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while read
        raise UsageError(f"{what}: {path} is over {max_bytes:,} bytes")
    return data


def depth(value, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects, counted up to ``limit + 1`` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json(text: str | bytes, what: str, kind: type | tuple = object, max_depth: int = MAX_DEPTH):
    """``text`` as JSON of type ``kind`` (dict, list, ...) nested at most ``max_depth`` deep, or a UsageError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise UsageError(f"{what}: nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{what}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if depth(value, max_depth) > max_depth:
        raise UsageError(f"{what}: nested more than {max_depth} levels deep")
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UsageError(f"{what}: a JSON {type(value).__name__}, not a {names.replace('dict', 'JSON object')}")
    return value


def read_json(path, what: str = "", kind: type | tuple = dict, max_bytes: int = MAX_JSON_BYTES):
    """The JSON file ``path`` (bounded in size and depth, of type ``kind``), or a UsageError."""
    what = what or str(path)
    return parse_json(read_bytes(path, what, max_bytes), what, kind)


def json_lines(path, what: str = "", max_bytes: int = MAX_JSON_BYTES) -> list[tuple[int, object]]:
    """``[(line number, value or the exception)]`` of a JSON-lines file (blank lines skipped), each line bounded in depth:
    callers decide what a bad line means (a torn last line of a log is dropped, a bad caption line refused)."""
    what = what or str(path)
    text = read_bytes(path, what, max_bytes).decode("utf-8", errors="replace")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, parse_json(line, f"{what}: line {n}")))
        except UsageError as e:
            out.append((n, e))
    return out


def write_atomic(path, data: bytes | str, what: str = "") -> Path:
    """Write ``data`` to ``path`` atomically (a unique temp file beside it, fsync, rename); a failure is a UsageError and
    leaves ``path`` as it was, with no temp file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"{what or 'diffctl'}: could not write {path}: {e.strerror or e} (disk full, quota or a read-only folder?); "
                         "nothing was replaced") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, obj, what: str = "") -> Path:
    return write_atomic(path, json.dumps(obj, indent=2) + "\n", what)
