"""Shell completion: ``diffctl __complete`` (its candidate lists in this process, what a Tab press imports and its
errors in real subprocesses), and the scripts of ``diffctl completion`` run by
their shells (bash always; zsh and fish where installed)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffctl.cli import COMMANDS as HYDRA_COMMANDS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMANDS = sorted([*HYDRA_COMMANDS, "runs", "compare", "completion"])  # every command but the hidden __complete


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory):
    """PATH with a ``diffctl`` that runs this interpreter's diffctl, and a completion cache of this module's own."""
    root = tmp_path_factory.mktemp("completion")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "diffctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m diffctl "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "XDG_CACHE_HOME": str(root / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("DIFFCTL_COMPLETE_DEBUG", None)
    return env


def complete(env, *words, flags=()):
    proc = subprocess.run([sys.executable, *flags, "-m", "diffctl", "__complete", *words], capture_output=True, text=True,
                          env={**env, "DIFFCTL_COMPLETE_DEBUG": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def candidates(env, *words) -> list[str]:
    """What ``diffctl __complete <words>`` prints, computed in this process with ``env``'s cache (the candidate lists; the
    subprocess tests here keep the process boundary: what a Tab press imports, the exit codes, the shells' scripts)."""
    from diffctl.cli import completion_inputs
    from diffctl.completion import complete as complete_here

    with pytest.MonkeyPatch.context() as m:
        m.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
        m.setenv("DIFFCTL_COMPLETE_DEBUG", "1")
        return complete_here(list(words), *completion_inputs())


def test_the_schema_cache_is_made_once_and_a_tab_press_imports_no_torch(shell_env):
    cache = Path(shell_env["XDG_CACHE_HOME"]) / "diffctl"
    start = time.perf_counter()
    cold = complete(shell_env, "train", "trainer.st")
    cold_s = time.perf_counter() - start
    assert cold.stdout.split() == ["trainer.steps="] and len(list(cache.glob("completion-schemas-*.json"))) == 1
    start = time.perf_counter()
    warm = complete(shell_env, "train", "trainer.st", flags=("-X", "importtime"))
    warm_s = time.perf_counter() - start
    assert warm.stdout.split() == ["trainer.steps="]
    imported = {line.rsplit("|", 1)[-1].strip() for line in warm.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and "diffctl.completion" in imported  # importtime did report
    assert not {"torch", "numpy", "diffctl.config"} & imported, sorted(imported)
    print(f"cold (makes the cache, imports torch): {cold_s:.2f} s; warm: {warm_s:.2f} s (with -X importtime)")
    # code that changed since (a stale key) remakes this installation's file in place; another installation's is left alone
    (mine,) = cache.glob("completion-schemas-*.json")
    other = cache / "completion-schemas-0000000000000000.json"
    other.write_text('{"key": "another install", "nodes": {}}')
    mine.write_text(mine.read_text().replace('"key": "', '"key": "stale', 1))
    stale = complete(shell_env, "train", "trainer.st", flags=("-X", "importtime"))
    assert stale.stdout.split() == ["trainer.steps="] and "torch" in stale.stderr  # remade, at torch's cost
    assert '"key": "stale' not in mine.read_text() and other.read_text() == '{"key": "another install", "nodes": {}}'
    assert sorted(cache.iterdir()) == sorted([mine, other])  # nothing deleted, no temporary file left


@pytest.mark.parametrize("words,expected", [
    ([""], COMMANDS),
    (["tr"], ["train"]),
    (["-"], ["--help", "--version"]),
    (["completion", ""], ["bash", "zsh", "fish"]),
    (["runs", "--"], ["--help", "--output-root"]),
    (["train", "sched"], ["schedule.", "schedule="]),
    (["train", "schedule="], [f"schedule={o}" for o in options("schedule")]),
    (["train", "schedule=co"], ["schedule=cosine"]),
    (["train", "-m", "schedule=linear,co"], ["schedule=linear,cosine"]),
    (["train", "trainer.st"], ["trainer.steps="]),
    (["train", "trainer."], None),  # every key of the trainer, checked below
    (["train", "logger="], [f"logger={o}" for o in options("logger")]),  # a group given a list in the defaults
    (["train", "hydra/la"], ["hydra/launcher="]),
    (["train", "experiment=ddpm_cifar10", "trainer.ema"], ["trainer.ema_decay="]),
    (["train", "schedule=nope", "trainer.st"], ["trainer.steps="]),  # an earlier typo: completed without it
    (["train", "--c"], ["--cfg", "--config-dir"]),
    (["train", "--cfg", ""], ["all", "hydra", "job"]),
    (["train", "--cfg", "job", "sched"], ["schedule.", "schedule="]),
    (["sample", "sampler="], [f"sampler={o}" for o in options("sampler")]),
    (["sample", "sched"], ["schedule="]),  # null in sample's defaults: a group it takes, with no keys yet
    (["sample", "tr"], []),  # sample composes no trainer
    (["sample", "trainer="], []),
    (["sample", "opt"], []),
    (["eval", "lo"], []),
])
def test_complete_prints_the_candidates(shell_env, words, expected):
    got = candidates(shell_env, *words)
    if expected is None:
        assert {"trainer.steps=", "trainer.batch_size=", "trainer.ema_decay=", "trainer.precision="} <= set(got)
        assert all(c.startswith("trainer.") and c.endswith("=") for c in got), got
    else:
        assert got == expected


def test_after_a_command_its_groups_and_keys_are_offered(shell_env):
    train = set(candidates(shell_env, "train", ""))
    assert {f"{g}=" for g in ("dataset", "model", "schedule", "sampler", "loss", "trainer", "optim", "logger", "experiment")} <= train
    assert {"trainer.", "seed=", "hydra/", "task="} <= train
    sample = set(candidates(shell_env, "sample", ""))
    assert {"sampler=", "sampler.", "ckpt=", "guidance.", "dataset=", "schedule="} <= sample
    assert not {"trainer=", "trainer.", "optim=", "loss=", "model=", "experiment="} & sample


def bash_complete(env, line, wordbreaks=None):
    """COMPREPLY of the script's function for the command line ``line`` (cursor at its end), in a real bash."""
    setup = 'COMP_WORDBREAKS="$2"; ' if wordbreaks is not None else ""
    script = (f'eval "$(diffctl completion bash)" || exit 3; complete -p diffctl >/dev/null || exit 4; {setup}'
              f'COMP_LINE="$1"; COMP_POINT=${{#1}}; read -r -a COMP_WORDS <<< "$1"; COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); '
              f'_diffctl_complete; printf "%s\\n" "${{COMPREPLY[@]}}"')
    proc = subprocess.run(["bash", "-c", script, "bash", line, wordbreaks or ""], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [l for l in proc.stdout.splitlines() if l]


@pytest.mark.parametrize("line,expected", [
    ("diffctl tr", ["train"]),
    ("diffctl ", COMMANDS),
    ("diffctl train sched", ["schedule.", "schedule="]),
    ("diffctl train trainer.st", ["trainer.steps="]),
    # bash completes only what follows the word's last '=' (a COMP_WORDBREAKS character): the option names
    ("diffctl train schedule=co", ["cosine"]),
    ("diffctl train schedule=", options("schedule")),
    ("diffctl sample sampler=eu", ["euler", "euler_ancestral"]),
    ("diffctl completion f", ["fish"]),
])
def test_bash_script_completes(shell_env, line, expected):
    assert bash_complete(shell_env, line) == expected


def test_bash_script_without_equals_among_the_word_breaks(shell_env):
    """A shell whose COMP_WORDBREAKS lacks '=' (Hydra's own script removes it) gets whole words."""
    assert bash_complete(shell_env, "diffctl train schedule=co", wordbreaks=" \t\n\"'><;|&(:") == ["schedule=cosine"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_parses_and_offers_candidates(shell_env):
    script = subprocess.run([sys.executable, "-m", "diffctl", "completion", "zsh"], capture_output=True, text=True, env=shell_env,
                            check=True).stdout
    subprocess.run(["zsh", "-n"], input=script, text=True, check=True)
    # compsys' compadd and _files, stubbed: what _diffctl hands them (<suffix>: '' keeps the cursor on the word)
    stubs = ('compdef() { print -r -- "compdef $*" }; eval "$(diffctl completion zsh)"; '
             'compadd() { local arr suffix=" "; while (( $# )); do case $1 in -a) arr=$2; shift 2;; -S) suffix=$2; shift 2;; '
             '*) shift;; esac; done; for c in "${(@P)arr}"; do print -r -- "${c}<${suffix}>"; done }; _files() { print FILES }; '
             'words=(diffctl train sched); CURRENT=3; PREFIX=sched; _diffctl; '
             'words=(diffctl train schedule=co); CURRENT=3; PREFIX=schedule=co; _diffctl; '
             'words=(diffctl train ckpt=nothing_here); CURRENT=3; PREFIX=ckpt=nothing_here; _diffctl')
    out = subprocess.run(["zsh", "-f", "-c", stubs], capture_output=True, text=True, env=shell_env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["compdef _diffctl diffctl", "schedule.<>", "schedule=<>", "schedule=cosine< >", "FILES"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_script_parses_and_completes(shell_env):
    script = subprocess.run([sys.executable, "-m", "diffctl", "completion", "fish"], capture_output=True, text=True, env=shell_env,
                            check=True).stdout
    subprocess.run(["fish", "-n"], input=script, text=True, check=True)
    out = subprocess.run(["fish", "--no-config", "-c", 'diffctl completion fish | source; complete -C"diffctl train sched"; '
                          'echo ==; complete -C"diffctl train schedule=co"; echo ==; complete -C"diffctl sample tr"; '
                          'echo ==; complete -C"diffctl completion "'],
                         capture_output=True, text=True, env=shell_env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("==\n") == ["schedule.\nschedule=\n", "schedule=cosine\n", "", "bash\nfish\nzsh\n"]


def test_scripts_are_printed_for_each_shell(shell_env):
    for shell, marker in (("bash", "complete -o default -F _diffctl_complete diffctl"), ("zsh", "compdef _diffctl diffctl"),
                          ("fish", "complete -c diffctl")):
        proc = subprocess.run([sys.executable, "-m", "diffctl", "completion", shell], capture_output=True, text=True, env=shell_env)
        assert proc.returncode == 0 and marker in proc.stdout and "diffctl __complete" in proc.stdout, proc.stderr


@pytest.mark.parametrize("args,message", [
    (["completion", "tcsh"], "diffctl completion: error: no completion for shell 'tcsh'; choose from: bash, zsh, fish"),
    (["completion"], "diffctl completion: error: give one shell: bash, zsh or fish"),
    (["completion", "bash", "zsh"], "diffctl completion: error: give one shell: bash, zsh or fish (got: bash zsh)"),
    (["train", "-sc", "install=bash"], "diffctl train: error: Hydra's -sc completion cannot complete"),
    (["-sc", "query=bash"], "diffctl: error: Hydra's -sc completion cannot complete"),  # what Hydra's old script runs
])
def test_bad_completion_inputs_are_one_line_errors(shell_env, args, message):
    proc = subprocess.run([sys.executable, "-m", "diffctl", *args], capture_output=True, text=True, env=shell_env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message) and not proc.stdout, (proc.stdout, proc.stderr)
    if "-sc" in args:
        assert 'eval "$(diffctl completion bash)"' in lines[0]


def test_complete_never_fails_and_the_hidden_command_is_not_listed(shell_env):
    assert complete(shell_env).stdout.split() == COMMANDS  # no word at all: the commands
    assert complete(shell_env, "nosuchcommand", "x").stdout == ""
    assert "__complete" not in subprocess.run([sys.executable, "-m", "diffctl", "--help"], capture_output=True, text=True,
                                              env=shell_env).stdout


def test_the_script_calls_the_diffctl_that_made_it_even_off_path(shell_env, tmp_path):
    """The Quick start never activates the virtual environment: a script calling a 'diffctl' looked up on PATH completed
    nothing, silently. It calls the executable that printed it, by its absolute path."""
    bare = {**shell_env, "PATH": "/usr/bin:/bin"}  # no diffctl on it
    proc = subprocess.run([sys.executable, "-m", "diffctl", "completion", "bash"], capture_output=True, text=True, env=bare, timeout=120)
    assert proc.returncode == 0 and f"{sys.executable} -m diffctl __complete" in proc.stdout
    assert "no diffctl on PATH" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    script = ('eval "$1"; COMP_LINE="diffctl tr"; COMP_POINT=10; COMP_WORDS=(diffctl tr); COMP_CWORD=1; '
              '_diffctl_complete; printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", script, "bash", proc.stdout], capture_output=True, text=True, env=bare, timeout=120)
    assert out.stdout.split() == ["train"], out.stderr
    console = Path(sys.executable).parent / "diffctl"  # the installed console script, where there is one
    if console.is_file():
        proc = subprocess.run([str(console), "completion", "zsh"], capture_output=True, text=True, env=bare, timeout=120)
        assert f"command {console} __complete" in proc.stdout
