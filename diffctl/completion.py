"""Shell completion of ``diffctl``, and the config groups a command's ``--help`` lists.

``diffctl completion bash|zsh|fish`` prints a script for that shell; its completion function runs
``diffctl __complete <words>`` (the words after ``diffctl``, the last one the word being completed, possibly
empty), which prints the candidates one a line: command names; after a Hydra command, the config groups
its config composes (``schedule=``), their options as Hydra reads them from the config search path
(``schedule=cosine``), the keys of the composed config (``trainer.steps=``, ``trainer.``) and Hydra's flags.
The config is composed by Hydra's own config loader with the overrides already typed, and matched by
Hydra's completion code (``CompletionPlugin``); a group the command does not compose is never offered.

Composing needs the schemas of ``diffctl.config``, and making them imports torch (seconds). Completion
reads them from a cache instead (``$XDG_CACHE_HOME/diffctl`` or ``~/.cache/diffctl``, remade when the
code of the installed diffctl changes): only the first Tab press after an install or upgrade waits for
torch; every other one takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

# Hydra flags that diffctl's commands do not take: the config path and name are diffctl's, Hydra's
# -sc completion cannot complete a two-word command, and --version would print Hydra's.
_NOT_OFFERED = {"--config-path", "-cp", "--config-name", "-cn", "--shell-completion", "-sc", "--version"}

BASH = r"""# diffctl completion for bash; in ~/.bashrc: eval "$(diffctl completion bash)"
_diffctl_complete() {
    local line=${COMP_LINE:0:COMP_POINT} cut=0 i c
    local -a words
    read -r -a words <<< "$line"
    if [[ ${#words[@]} -eq 0 || $line =~ [[:space:]]$ ]]; then words+=(""); fi
    local cur=${words[${#words[@]}-1]}
    # bash replaces only what follows the word's last COMP_WORDBREAKS character (= and : among them)
    for (( i=${#cur}; i>0; i-- )); do
        if [[ $COMP_WORDBREAKS == *"${cur:i-1:1}"* ]]; then cut=$i; break; fi
    done
    COMPREPLY=()
    while IFS= read -r c; do
        [[ -n $c ]] && COMPREPLY+=("${c:cut}")
    done < <(command {diffctl} __complete "${words[@]:1}" 2>/dev/null)
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./] ]]; then compopt -o nospace 2>/dev/null; fi
    return 0
}
complete -o default -F _diffctl_complete diffctl
"""

ZSH = r"""# diffctl completion for zsh; in ~/.zshrc: eval "$(diffctl completion zsh)"
_diffctl() {
    local -a candidates open closed
    candidates=(${(f)"$(command {diffctl} __complete "${(@)words[2,CURRENT-1]}" "$PREFIX" 2>/dev/null)"})
    if (( ! ${#candidates} )); then _files; return; fi
    open=(${(M)candidates:#*[=./]})
    closed=(${candidates:#*[=./]})
    (( ${#open} )) && compadd -S '' -a open
    (( ${#closed} )) && compadd -a closed
    return 0
}
if (( ! $+functions[compdef] )); then autoload -Uz compinit && compinit; fi
compdef _diffctl diffctl
"""

FISH = r"""# diffctl completion for fish; in ~/.config/fish/config.fish: diffctl completion fish | source
function __diffctl_complete
    set -l words (commandline -opc)
    set -l cur (commandline -ct)
    command {diffctl} __complete $words[2..-1] "$cur" 2>/dev/null
end
complete -c diffctl -f -a '(__diffctl_complete)'
complete -c diffctl -n '__fish_seen_subcommand_from compare' -F
"""

SHELLS = {"bash": BASH, "zsh": ZSH, "fish": FISH}
NOT_SC = ("Hydra's -sc completion cannot complete diffctl's two-word commands; instead: "
          'eval "$(diffctl completion bash)" (or zsh; fish: diffctl completion fish | source)')


def executable() -> str:
    """The shell words that run this diffctl, whatever PATH holds when Tab is pressed: the console script that is running,
    by its absolute path, or this interpreter with ``-m diffctl``."""
    import shlex

    argv0 = Path(sys.argv[0]).absolute()
    if argv0.name == "diffctl" and argv0.is_file() and os.access(argv0, os.X_OK):
        return shlex.quote(str(argv0))
    return f"{shlex.quote(sys.executable)} -m diffctl"


def script(shell: str) -> str:
    """The completion script of ``shell`` (it calls ``executable()``); ValueError for a shell without one."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for shell {shell!r}; choose from: {', '.join(SHELLS)}")
    return SHELLS[shell].replace("{diffctl}", executable())


def complete(words: list[str], configs: dict[str, str], click_group: Callable[[], Any]) -> list[str]:
    """The candidates for the last of ``words`` (the words after ``diffctl``); never raises
    (DIFFCTL_COMPLETE_DEBUG=1 shows what went wrong). ``configs``: each Hydra command's primary config;
    ``click_group()``: the click group of the command line (its other commands and options), built only when needed.
    The command line passes both, so this module knows no command of its own."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _complete(list(words) or [""], configs, click_group)
    except (Exception, SystemExit):
        if os.environ.get("DIFFCTL_COMPLETE_DEBUG") == "1":
            raise
        return []


def _complete(words: list[str], configs: dict[str, str], click_group: Callable[[], Any]) -> list[str]:
    *before, cur = words
    if not before:
        return _top_level(click_group(), cur)
    if before[0] in configs:
        return _hydra_command(configs[before[0]], before[1:], cur)
    return _typer_command(click_group(), before[0], before[1:], cur)


def _options(command) -> list[str]:
    names = ["--help"]
    for param in command.params:
        if param.param_type_name == "option":
            names += [*param.opts, *param.secondary_opts]
    return names


def _top_level(group, cur: str) -> list[str]:
    if cur.startswith("-"):
        return sorted({o for o in _options(group) if o.startswith(cur)})
    return sorted(name for name, cmd in group.commands.items() if not cmd.hidden and name.startswith(cur))


def _typer_command(group, name: str, before: list[str], cur: str) -> list[str]:
    """``runs``, ``compare``, ``completion``: their options, and the shell names of ``completion``; files are
    left to the shell."""
    command = group.commands.get(name)
    if command is None or command.hidden:
        return []
    if cur.startswith("-"):
        return sorted({o for o in _options(command) if o.startswith(cur)})
    if name == "completion" and not [w for w in before if not w.startswith("-")]:
        return [s for s in SHELLS if s.startswith(cur)]
    return []


def _hydra_flags() -> dict[str, Any]:
    """Hydra's command-line flags that a diffctl command takes -> their argparse action."""
    from hydra._internal.utils import get_args_parser

    return {o: a for a in get_args_parser()._actions for o in a.option_strings if o not in _NOT_OFFERED}


def _hydra_command(config_name: str, before: list[str], cur: str) -> list[str]:
    from hydra.plugins.completion_plugin import CompletionPlugin

    flags = _hydra_flags()
    if cur.startswith("-"):
        return sorted(f for f in flags if f.startswith(cur))
    values: list[str] = []
    if before and before[-1] in flags and flags[before[-1]].nargs != 0:
        action = flags[before[-1]]
        values = sorted(c for c in action.choices or () if c.startswith(cur))
        if action.nargs != "?":  # the flag's value, not an override (--cfg job); files are the shell's
            return values
    overrides, multirun, pending = [], False, None
    for word in before:
        if pending is not None:
            action, pending = pending, None
            if action.nargs is None or word in (action.choices or ()):
                continue  # that flag's value (--cfg job, --info defaults)
        if word in flags:
            multirun |= flags[word].dest == "multirun"
            pending = flags[word] if flags[word].nargs != 0 else None
        elif not word.startswith("-"):
            overrides.append(word)

    key_eq, filename = CompletionPlugin._get_filename(cur)
    if filename is not None:  # key=./path or key=/path: Hydra's file completion
        files = [f + "/" if os.path.isdir(f) else f for f in CompletionPlugin.complete_files(filename)]
        return sorted(values + [key_eq + f for f in files])

    loader = _config_loader()
    groups = composed_groups(loader, config_name, overrides, multirun)
    if groups is None:  # the overrides typed so far make no defaults list (schedule=nope): complete without them
        overrides = []
        groups = composed_groups(loader, config_name, overrides, multirun) or []
    matches = values + _group_matches(loader, config_name, overrides, groups, cur)
    if not ("=" in cur and _PREFIX.match(cur).group(2).partition("=")[0] in groups):  # not a group's option: keys
        cfg = _compose(loader, config_name, overrides, multirun)
        matches += _key_matches(cfg, cur) if cfg is not None else []
    return sorted(set(matches))


_PREFIX = re.compile(r"^(\+\+|\+|~)?(.*)$", re.S)


def _group_matches(loader, config_name: str, overrides: list[str], groups: list[str], cur: str) -> list[str]:
    """``group=`` for the groups the command composes (``hydra/`` for Hydra's own), or ``group=option``
    (the last of a comma-separated sweep) from the search path; ``~group`` removes one. (``+group=`` adds
    a group the command does not compose, which its config would refuse.)"""
    from hydra.core.object_type import ObjectType

    prefix, word = _PREFIX.match(cur).groups()
    prefix = prefix or ""
    if prefix.startswith("+"):
        return []
    if "=" in word:
        group, _, value = word.partition("=")
        if group not in groups:
            return []
        head, _, last = value.rpartition(",")
        head = f"{head}," if head else ""
        options = loader.get_group_options(group, ObjectType.CONFIG, config_name=config_name, overrides=overrides)
        return [f"{prefix}{group}={head}{o}" for o in sorted(options) if o.startswith(last)]
    depth = word.count("/")
    out = set()
    for group in groups:
        parts = group.split("/")
        if not group.startswith(word):
            continue
        if len(parts) > depth + 1:  # a nested group: offer its folder first (hydra/)
            out.add(prefix + "/".join(parts[: depth + 1]) + "/")
        else:
            out.add(f"{prefix}{group}" + ("" if prefix == "~" else "="))
    return sorted(out)


def _key_matches(cfg, cur: str) -> list[str]:
    """Keys of the composed config (``trainer.``, ``trainer.steps=``) and a key's current value, as Hydra's
    completion matches them; ``++key=`` too (``+key=`` adds a key, which no config here takes)."""
    from hydra.plugins.completion_plugin import CompletionPlugin

    prefix, word = _PREFIX.match(cur).groups()
    if prefix in ("~", "+") or ("=" in word and not word.endswith("=")):
        return []
    try:
        return [(prefix or "") + m for m in CompletionPlugin._get_matches(cfg, word)]
    except Exception:  # a value whose interpolation only a run can resolve (hydra.run.dir=)
        return []


def _config_loader():
    """Hydra's config loader over diffctl's search path (with its plugins'), the schemas in its ConfigStore."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in schema_nodes().items():
        store.store(name=name, node=node)
    return ConfigLoaderImpl(config_search_path=create_config_search_path("pkg://diffctl.configs"))


def _compose(loader, config_name: str, overrides: list[str], multirun: bool):
    """The command's config with the overrides typed so far; without them if they do not compose (a typo
    earlier on the line); None if even that fails."""
    from hydra.types import RunMode

    mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    for attempt in (overrides, []):
        try:
            return loader.load_configuration(config_name=config_name, overrides=attempt, run_mode=mode)
        except Exception:
            continue
    return None


# --- the schemas, cached --------------------------------------------------------------------------
def _cache_file() -> tuple[Path, str]:
    """(the cache file of this installation, the key of its current code): one file per interpreter and package folder,
    rewritten in place when the key (the version and every source file's size and time) changes, so an edit or an
    upgrade remakes it and no other installation's file is ever touched."""
    from . import __version__

    package = Path(__file__).resolve().parent
    digest = hashlib.sha1(f"{__version__}\0{sys.prefix}".encode())
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(package)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    install = hashlib.sha1(f"{sys.prefix}\0{package}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffctl"
    return root / f"completion-schemas-{install}.json", digest.hexdigest()


def schema_nodes() -> dict[str, Any]:
    """``diffctl.config``'s schemas (name -> plain dict, which composes like the typed schema), from the cache
    when it is current; otherwise made (importing torch) and cached."""
    path: Optional[Path] = None
    try:
        path, key = _cache_file()
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["nodes"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    from omegaconf import OmegaConf

    from .config import _schemas

    nodes = {name: OmegaConf.to_container(OmegaConf.structured(schema), resolve=False) for name, schema in _schemas().items()}
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # this process's own file, renamed over the old cache at once
            tmp.write_text(json.dumps({"key": key, "nodes": nodes}, default=str))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: completion still works, each time at torch's cost
    return nodes


# --- --help ----------------------------------------------------------------------------------------
HELP_OVERRIDE = "hydra.help.template=${diffctl_help:}"  # added by ``run_command`` to a command given --help


def composed_groups(loader, config_name: str, overrides: list[str], multirun: bool = False) -> Optional[list[str]]:
    """The config groups that config ``config_name`` composes with ``overrides``, from its defaults list: those
    with a choice (null included) and those given a list of options (``logger: [csv]``, which Hydra records
    among no choices); Hydra's own are ``hydra/...``. None if the overrides make no defaults list."""
    from hydra.types import RunMode

    try:
        defaults = loader.compute_defaults_list(config_name, list(overrides), RunMode.MULTIRUN if multirun else RunMode.RUN)
    except Exception:
        return None
    groups = set(defaults.overrides.known_choices)
    groups |= {d.config_path.rpartition("/")[0] for d in defaults.defaults if "/" in (d.config_path or "")}
    return sorted(groups - {"hydra"})  # hydra/config: Hydra's own primary config, not a choice


def with_help_template(args: list[str]) -> list[str]:
    """A command's argv given --help, with HELP_OVERRIDE among its overrides: before the first of them, as
    Hydra's parser takes overrides in one run (or first, when there is none)."""
    from hydra._internal.utils import get_args_parser

    takes_value = {o: a for a in get_args_parser()._actions for o in a.option_strings if a.nargs != 0}
    for i, arg in enumerate(args):
        flag = takes_value.get(args[i - 1]) if i else None
        if not arg.startswith("-") and not (flag and (flag.nargs is None or arg in (flag.choices or ()))):
            return [*args[:i], HELP_OVERRIDE, *args[i:]]
    return [HELP_OVERRIDE, *args]


def help_template(*, _root_) -> str:
    """Hydra's help template for the composed config ``_root_`` (resolver ``diffctl_help``): Hydra's default
    layout, but the config groups are only those this command's config composes, each with its options from
    the search path, and the footer's examples are only those of this command."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    hydra = _root_.hydra
    loader = GlobalHydra.instance().config_loader()
    overrides = [o for o in OmegaConf.to_container(hydra.overrides, resolve=False)["hydra"] if o != HELP_OVERRIDE]
    overrides += OmegaConf.to_container(hydra.overrides, resolve=False)["task"]
    groups = composed_groups(loader, hydra.job.config_name, overrides) or sorted(hydra.runtime.choices)
    lines = [f"{g}: {', '.join(sorted(loader.get_group_options(g)))}" for g in groups if not g.startswith("hydra/")]
    command = hydra.job.name
    footer = "\n".join(l for l in str(hydra.help.footer).splitlines()
                       if not (m := re.match(r"\s+diffctl ([\w-]+)", l)) or m.group(1) == command)
    footer = re.sub(r"Examples:\n(?!\s)", "", footer)  # no example of this command left
    escape = lambda text: str(text).replace("$", "$$")  # noqa: E731  (string.Template's literal $)
    return (f"{escape(hydra.help.header).rstrip()}\n== Configuration groups ==\n"
            f"Compose your configuration from those groups (group=option)\n\n{escape(chr(10).join(lines))}\n\n\n"
            f"== Config ==\nOverride anything in the config (foo.bar=value)\n\n$CONFIG\n\n{escape(footer)}\n")
