"""The ``diffctl`` command group.

``diffctl <command> ...`` for a Hydra command (train, sample, eval, inspect-schedule) hands the
rest of argv to that command's Hydra application untouched, so ``-m``, ``--cfg job``, ``--help``
and launchers work as in any Hydra app.  Typer handles only ``diffctl --help``, ``--version``
and helper commands such as ``diffctl runs``.  Mistakes a user can fix print one line
(``diffctl <command>: error: ...``) and exit 2, without a traceback; HYDRA_FULL_ERROR=1 shows
the full traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable

import typer

from . import __version__
from .overrides import other_rank_overrides, override_key, quote_overrides, refuse_occupied_output_dir, resume_run_dir

# name -> (primary config, one-line help). Names never change once released.
COMMANDS = {
    "train": ("train", "Train a model; checkpoints, metrics, grids."),
    "sample": ("sample", "Sample from ckpt=<file|run|latest>."),
    "eval": ("eval", "Metrics of a checkpoint, with floors."),
    "inspect-schedule": ("inspect_schedule", "Table and curves of a noise schedule."),
    "export": ("export", "Weights as safetensors + JSON config."),
}


def _runner(command: str) -> Callable:
    """The function that does a command's work: (cfg, run_dir) -> summary dict."""
    if command == "train":
        from .trainer import run_train as fn
    elif command == "sample":
        from .sample import run_sample as fn
    elif command == "eval":
        from .evaluation import run_eval as fn
    elif command == "export":
        from .export import run_export as fn
    else:
        from .inspect import run_inspect as fn
    return fn


LAST_RUNS: list[Path] = []  # the run folders of this process's commands, in order (diffctl.train returns the last)


def hydra_app(command: str) -> Callable[[], None]:
    """A real ``@hydra.main`` application for ``command``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from .completion import help_template
    from .config import register_schemas
    from .errors import Interrupted
    from .io.rundir import RunLock, new_run_dir, owned, save_config
    from .progress import use_console_for_logs
    from .runtime import apply_threads
    from .validation import validate

    register_schemas()
    OmegaConf.register_new_resolver("diffctl_run_dir", new_run_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("diffctl_help", help_template, replace=True)  # --help: only this command's groups

    @hydra.main(version_base="1.3", config_path="pkg://diffctl.configs", config_name=COMMANDS[command][0])
    def app(cfg):
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        fresh = owned(run_dir)  # made by this command (a resumed run's folder is not: nothing in it is ever removed)

        def record() -> None:
            """The run's config (and a continued run's overrides, which a later resume=<folder> reuses); written
            for a continued run only once it has run, so a rejected resume leaves the folder as it was."""
            save_config(run_dir, cfg)
            if not fresh:
                task = [o for o in HydraConfig.get().overrides.task if not override_key(o).startswith(("hydra.", "resume"))]
                (run_dir / ".hydra").mkdir(exist_ok=True)
                OmegaConf.save(OmegaConf.create(task), run_dir / ".hydra" / "overrides.yaml")
            (run_dir / "FAILED").unlink(missing_ok=True)

        with contextlib.ExitStack() as held:
            try:
                validate(cfg)
                use_console_for_logs()  # on a terminal: log lines above the progress bars, not into them
                logging.getLogger(f"diffctl.{command}").info(apply_threads(cfg.get("threads")))
                run_dir.mkdir(parents=True, exist_ok=True)
                if command == "train" and _rank() == 0:  # one process trains in a run folder at a time
                    held.enter_context(RunLock(run_dir))
                if command != "train":  # train stops at a step boundary with a checkpoint (resume.StopOnSignal)
                    held.enter_context(_terminate_as_interrupt())
                if fresh:
                    save_config(run_dir, cfg)
                summary = _runner(command)(cfg, run_dir) or {}
            except Interrupted as e:  # stopped on request, its state saved: resumable, not failed
                record()
                if _rank() == 0:
                    print(f"diffctl {command}: {e}", file=sys.stderr, flush=True)
                raise SystemExit(e.code) from None
            except BaseException as e:
                if fresh:
                    _discard_run_dir(run_dir, command, e)
                if isinstance(e, _user_errors()):
                    _fail(command, e)  # reported here, inside the job, so Hydra adds no lines of its own around it
                raise
            record()
        if _rank() == 0:
            print(f"run folder: {run_dir}", flush=True)
        LAST_RUNS.append(run_dir)
        return summary.get("objective")  # what a Hydra sweeper (optuna) minimises

    return app


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While a command runs, SIGTERM and SIGHUP stop it as Ctrl-C does (``errors.Terminated``), so that its run folder is
    marked FAILED (or removed, when it holds nothing) instead of the process vanishing mid-write."""
    import signal
    import threading

    from .errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Terminated(signum)

    saved = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _rank() -> int:
    """This process's rank in a torchrun job (0 otherwise)."""
    return int(os.environ.get("RANK", 0))


def _discard_run_dir(run_dir: Path, command: str, err: BaseException | None) -> None:
    """A run that failed before producing anything leaves no folder; one that did is marked FAILED (unless ``err`` is
    None: reported already). Only a folder this command created is ever removed (with the date and command folders it made)."""
    import shutil

    from .io.rundir import RunLock, owned, remove_made_parents

    if not run_dir.is_dir() or not owned(run_dir):
        return
    bookkeeping = {"config.yaml", ".hydra", f"{command.replace('-', '_')}.log", f"{command}.log", "multirun.yaml", RunLock.NAME}
    if all(p.name in bookkeeping for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        remove_made_parents(run_dir)
    elif err is not None:
        reason = "interrupted" if type(err) is KeyboardInterrupt else _one_line(err) or type(err).__name__
        (run_dir / "FAILED").write_text(f"diffctl {command} failed: {reason}\n")


PLUGIN_EXTRAS = {"submitit": "slurm", "joblib": "sweeps", "optuna": "optuna"}  # Hydra plugin -> the diffctl extra that installs it


def _unknown_key(match) -> str:
    """Hydra's answer to a mistyped key (``trainer.stps=10``) without its advice to append it with ``+`` (which would
    only fail later against the typed schema): the closest keys the schema has."""
    import difflib
    from dataclasses import fields, is_dataclass

    from .config import _schemas

    key, leaf, schema = match.groups()
    known = next(([f.name for f in fields(s)] for s in _schemas().values() if is_dataclass(s) and s.__name__ == schema), [])
    parent = key[: -len(leaf)]
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(parent + c for c in close)}?" if close else f"; {schema} has: {', '.join(known)}" if known else ""
    return f"unknown key '{key}'{hint}"


def _one_line(err: BaseException) -> str:
    """Collapse a Hydra / OmegaConf / diffctl error into one readable line."""
    parts = []
    for e in (err, err.__cause__):
        if e is None:
            continue
        for line in str(e).splitlines():
            line = line.strip()
            if line.startswith(("Config search path", "provider=", "full_key", "object_type", "reference_type")) or line.startswith("pkg://"):
                continue
            if line and line not in parts:
                parts.append(line)
        if "Config search path" in str(e):
            break
    text = re.sub(r"\b\w+ raised while resolving interpolation: ", "", "; ".join(parts))  # our own error inside a resolver
    # a group this command does not have (sample model=...): Hydra's hint to append it with + would only fail later
    text = re.sub(r"Could not override '([\w.]+)'\. No match in the defaults list\.(; To append .*)?", r"this command has no '\1' config group", text)
    text = re.sub(r"Could not override '([\w.]+)'\.; To append to your config use \+\S+; Key '(\w+)' not in '(\w+)'", _unknown_key, text)
    plugin = re.search(r"Could not load 'hydra/(?:launcher|sweeper)/(\w+)'", text)  # a preset whose Hydra plugin is not installed
    extra = next((e for key, e in PLUGIN_EXTRAS.items() if plugin and key in plugin.group(1)), None)
    if extra:
        text = text.rstrip(". ") + f"; its Hydra plugin is not installed: pip install 'diffctl[{extra}]'"
    if "Available options in" in text:  # Hydra lists options one per line: join them with commas
        head, _, opts = text.partition("Available options in")
        name, _, opts = opts.partition(":")
        text = f"{head}available options in{name}: {', '.join(o.strip() for o in opts.split(';') if o.strip())}"
    return " ".join(text.split())


def _fail(command: str, err: BaseException) -> None:
    """Print a user error as one line and exit 2 (or re-raise under HYDRA_FULL_ERROR=1)."""
    if os.environ.get("DIFFCTL_FULL_ERROR") == "1":
        raise err
    logging.getLogger("diffctl").debug("error", exc_info=err)
    rank = _rank()
    print(f"diffctl {command}{f' (rank {rank})' if rank else ''}: error: {_one_line(err)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _from_plugin(err: BaseException) -> bool:
    """Raised inside a Hydra launcher or sweeper plugin (e.g. submitit without SLURM): the environment's
    problem, reported in one line like a bad option."""
    tb = err.__traceback__
    while tb is not None:
        if "hydra_plugins" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _user_errors() -> tuple:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import UsageError

    return (UsageError, HydraException, OmegaConfBaseException, ValueError, OSError)


CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")  # configs of the user's own


@contextlib.contextmanager
def _hydra_shortcuts(args: list[str], helping: bool):
    """Two pieces of Hydra's work that a diffctl command does not need, skipped (each about a second on 2 cores):

    - --help formats every config group on the search path, for two placeholders that our template
      (completion.help_template: only this command's groups) does not use; --hydra-help still has them.
    - Every command composes its whole config twice, the first time only to read ``hydra.mode`` (Hydra.get_mode).
      None of diffctl's configs sets it (tests/test_cli.py checks), so unless an override names a mode or the user
      brings configs of their own, it is unset: RUN, or MULTIRUN with -m, as Hydra decides then."""
    from hydra._internal.hydra import Hydra

    saved = Hydra.format_config_groups, Hydra.get_mode
    if helping:
        Hydra.format_config_groups = lambda self, predicate, compact=True: ""
    if not any(override_key(a) in ("hydra", "hydra.mode", *CONFIG_FLAGS) for a in args):
        Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.format_config_groups, Hydra.get_mode = saved


def run_command(command: str, args: list[str]) -> int:
    """Run a Hydra command with ``args`` as its argv; returns the exit code.

    A user's HYDRA_FULL_ERROR=1 still shows full tracebacks; otherwise we set it so that
    composition errors reach us here instead of Hydra's multi-line report.
    """
    if any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in args):
        from .completion import NOT_SC

        print(f"diffctl {command}: error: {NOT_SC}", file=sys.stderr)
        return 2
    helping = any(a in ("--help", "-h") for a in args)
    if helping:  # the groups this command composes, not every group on the search path
        from .completion import with_help_template

        args = with_help_template(args)
    saved_env = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "DIFFCTL_FULL_ERROR", "DIFFCTL_RUN_DIRS")}
    if saved_env["HYDRA_FULL_ERROR"] == "1":
        os.environ["DIFFCTL_FULL_ERROR"] = "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    saved = sys.argv
    try:
        from .io.rundir import forget_run_dirs, new_run_dir

        forget_run_dirs()  # each command creates (and owns) its own run folder
        args = quote_overrides(args)
        refuse_occupied_output_dir(command, args)
        if command == "train":
            args = resume_run_dir(args) + other_rank_overrides()
        sys.argv = [f"diffctl {command}", *args]
        with _hydra_shortcuts(args, helping):
            hydra_app(command)()
        return 0
    except BrokenPipeError:  # the reader of our output went away (diffctl sample --help | head): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush does not fail again
        return 0
    except Exception as e:
        if not isinstance(e, _user_errors()) and not _from_plugin(e):
            raise  # a bug: its traceback is what a report needs
        for folder in new_run_dir.created.values():  # a sweep folder a launcher left with only its multirun.yaml
            _discard_run_dir(Path(folder), command, e)
        try:
            _fail(command, e)
        except SystemExit as exit_:
            return int(exit_.code)
    except KeyboardInterrupt as e:
        from .errors import Terminated

        if isinstance(e, Terminated):
            import signal

            print(f"diffctl {command}: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
            return 128 + e.signum
        print(f"diffctl {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # a job's one-line failure or a stop on request, already reported
        if exit_.code == 2:  # a sweep whose job was refused: its folder goes if the job left nothing in it
            for folder in new_run_dir.created.values():
                _discard_run_dir(Path(folder), command, None)
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv = saved
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="diffctl: train, sample and evaluate diffusion models from layered Hydra configs.\n\n"
                       "Each command takes Hydra overrides (group=option key=value), -m for sweeps, --cfg job, --help.")


def _version(value: bool) -> None:
    if value:
        print(f"diffctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    pass


def _register_stub(name: str, help_text: str) -> None:
    # Listed for `diffctl --help`; `main()` routes the real call to Hydra before Typer sees it.
    @app.command(name=name, help=help_text, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def _cmd(ctx: typer.Context) -> None:
        raise SystemExit(run_command(name, list(ctx.args)))


for _name, (_, _help) in COMMANDS.items():
    _register_stub(_name, _help)


def _output_root(option: str | None, command: str) -> Path:
    root = option if option is not None else os.environ.get("DIFFCTL_OUTPUT_ROOT", "outputs")
    if not root.strip():
        print(f"diffctl {command}: error: the output root is empty (--output-root or DIFFCTL_OUTPUT_ROOT); give the folder of the run folders",
              file=sys.stderr)
        raise SystemExit(2)
    return Path(root)


@app.command(help="List run folders, newest first: overrides, step, losses, latest eval.")
def runs(output_root: str = typer.Option(None, help="Default: $DIFFCTL_OUTPUT_ROOT or ./outputs")) -> None:
    from .runs import print_runs

    print_runs(_output_root(output_root, "runs"))


@app.command(help="Loss curves and eval numbers of several runs in one PNG.")
def compare(folders: list[Path] = typer.Argument(..., help="Run folders (train runs)"),
            out: Path = typer.Option(Path("compare.png"), help="Where the PNG goes"),
            output_root: str = typer.Option(None, help="Where eval runs are looked for; default: $DIFFCTL_OUTPUT_ROOT or ./outputs")) -> None:
    from .runs import compare as draw

    try:
        path = draw(folders, out, _output_root(output_root, "compare"))
    except (FileNotFoundError, OSError) as e:
        print(f"diffctl compare: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"compare: {path}")


@app.command(short_help="Shell completion script: bash | zsh | fish.",
             help='Print the shell completion script: eval "$(diffctl completion bash)" in ~/.bashrc (zsh: the same with zsh, '
                  'in ~/.zshrc); fish: diffctl completion fish | source. It completes commands, config groups and their options, '
                  'keys of the composed config and flags.',
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def completion(ctx: typer.Context, shell: str = typer.Argument(None, help="bash | zsh | fish", show_default=False)) -> None:
    import shutil

    from .completion import executable, script

    if shell is None or ctx.args:
        given = " ".join([shell or "", *ctx.args]).strip()
        print(f"diffctl completion: error: give one shell: bash, zsh or fish{f' (got: {given})' if given else ''}", file=sys.stderr)
        raise SystemExit(2)
    try:
        sys.stdout.write(script(shell))
    except ValueError as e:
        print(f"diffctl completion: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if shutil.which("diffctl") is None:  # (stderr: eval "$(...)" reads only the script)
        print(f"diffctl completion: note: no diffctl on PATH; the script runs {executable()}, so Tab completes once 'diffctl' "
              f"is on PATH (activate its virtual environment) or when it is typed by its path", file=sys.stderr)


def completion_inputs() -> tuple[dict[str, str], Callable]:
    """What shell completion needs of the command line: each Hydra command's primary config, and a function that
    builds the click group of the others (its options and commands)."""
    return {name: config for name, (config, _) in COMMANDS.items()}, lambda: typer.main.get_command(app)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["__complete"]:  # what the completion scripts call: the candidates for the last word, one a line
        from .completion import complete  # (before Typer, which would take the words' --help or --cfg as its own)

        candidates = complete(argv[1:], *completion_inputs())
        if candidates:
            print("\n".join(candidates))
        return
    if argv[:1] in (["-sc"], ["--shell-completion"]):  # a shell still holding what Hydra's -sc install=bash set up
        from .completion import NOT_SC

        print(f"diffctl: error: {NOT_SC}", file=sys.stderr)
        raise SystemExit(2)
    if argv and argv[0] in COMMANDS:
        raise SystemExit(run_command(argv[0], argv[1:]))
    app()
