"""How ``diffctl`` rewrites a command's argv before Hydra sees it: a resumed run's folder and its saved
overrides, values quoted for Hydra's override grammar, and the scratch folder of torchrun's other ranks."""

from __future__ import annotations

import os
from pathlib import Path


def override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def resume_run_dir(args: list[str]) -> list[str]:
    """``resume=<run folder|checkpoint>`` continues that run: in its folder, with its overrides.

    The run's own command-line overrides (``.hydra/overrides.yaml``) come first, so the same config
    is composed; any given now win (e.g. a larger ``trainer.steps``).
    """
    from .errors import UsageError
    from .io.checkpoint import list_checkpoints
    from .io.rundir import ABANDONED, CKPT_DIR

    values = [_unquote(a.split("=", 1)[1]) for a in args if a.startswith("resume=")]
    if not values or values[-1] in ("auto", "never") or any(a.startswith("hydra.run.dir=") for a in args):
        return args
    path = Path(values[-1]).expanduser()
    if path.is_file():
        if path.parent.name != CKPT_DIR or path.parent.parent.parent.name == ABANDONED:
            return args  # a loose checkpoint, or one of an abandoned branch: continued in a new run folder
        path = path.parent.parent
    elif not path.is_dir():
        raise UsageError(f"resume={values[-1]}: no such run folder or checkpoint")
    elif not list_checkpoints(path / CKPT_DIR):  # checked before anything is written there: it may not be diffctl's folder
        raise UsageError(f"resume={values[-1]}: no checkpoint in {path / CKPT_DIR} (give a run folder with checkpoints, a checkpoint file, auto or never)")
    saved_file = path / ".hydra" / "overrides.yaml"
    given = {override_key(a) for a in args}
    saved = []
    if saved_file.exists():
        import yaml

        try:
            listed = yaml.safe_load(saved_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UsageError(f"resume={values[-1]}: cannot read {saved_file} ({type(e).__name__}); fix or remove it and give the run's overrides again") from None
        if not isinstance(listed, list) or not all(isinstance(o, str) for o in listed):
            raise UsageError(f"resume={values[-1]}: {saved_file} is not a list of overrides; fix or remove it and give the run's overrides again")
        saved = [o for o in listed if override_key(o) not in given and not override_key(o).startswith(("hydra.", "resume"))]
    return [*saved, *args, f"hydra.run.dir={_quote(str(path))}", "hydra.output_subdir=null"]  # its .hydra/ is rewritten only if the run goes on


def refuse_occupied_output_dir(command: str, args: list[str]) -> None:
    """``hydra.run.dir=`` / ``hydra.sweep.dir=`` naming a folder that holds files: refused before Hydra writes anything there
    (its own ``.hydra/`` and log would replace the folder's), since a command writes only into a folder it creates or an
    empty one.  The one exception is ``diffctl train resume=<run>`` into that run's own folder."""
    from .errors import UsageError
    from .io.rundir import CKPT_DIR

    resumed = [Path(_unquote(a.split("=", 1)[1])).expanduser() for a in args if a.startswith("resume=")]
    resumed = [p.parent.parent if p.is_file() and p.parent.name == CKPT_DIR else p for p in resumed]
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or "${" in value:
            continue
        folder = Path(_unquote(value)).expanduser()
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            continue
        if command == "train" and key.endswith("run.dir") and any(r.is_dir() and r.resolve() == folder.resolve() for r in resumed[-1:]):
            continue
        what = "is not a folder" if not folder.is_dir() else "holds files"
        raise UsageError(f"{key.lstrip('+')}={value}: {folder} {what}; diffctl {command} writes only into a folder it creates (or an empty "
                         f"one), so nothing of yours is replaced: give a new folder, or leave {key.lstrip('+')} out")


def _quote(value: str) -> str:
    """A value as Hydra's override grammar reads it back unchanged: quoted when it holds characters the
    grammar does not take unquoted (non-ASCII letters, spaces)."""
    if value.isascii() and " " not in value or "'" in value or "\\" in value:
        return value
    return f"'{value}'"


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def quote_overrides(args: list[str]) -> list[str]:
    """``key=<non-ASCII path>`` quoted, so a run folder under such a path can be given to ckpt=, resume=, ..."""
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        plain = not value.isascii() and "," not in value and value[:1] not in "'\"[{"
        out.append(f"{key}={_quote(value)}" if eq and not key.startswith("-") and plain else a)
    return out


def other_rank_overrides() -> list[str]:
    """Under torchrun, ranks other than 0 keep no run folder and log nothing: they get rank 0's folder
    (broadcast by the trainer) and Hydra's own bookkeeping goes to a temporary folder removed at exit."""
    if int(os.environ.get("RANK", 0)) == 0:
        return []
    import atexit
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix=f"diffctl-rank{os.environ['RANK']}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
