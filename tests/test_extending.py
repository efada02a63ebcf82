"""docs/extending.md's worked examples, run as written: one function plus one YAML file adds a sampler
and a schedule that the command line, validation and evaluation then accept like the shipped ones."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"

# Adds the doc's code blocks to the modules they name and its YAML blocks to a config folder on Hydra's
# search path, then runs the real CLI entry point in that process (so the additions stay out of other tests).
SCRIPT = r"""
import json, pathlib, re, sys
import diffctl.core.samplers, diffctl.core.schedules
from diffctl.cli import run_command

doc, conf, commands = sys.argv[1:]
for kind, text in re.findall(r"```(python|yaml)\n(.*?)```", pathlib.Path(doc).read_text(), re.S):
    if kind == "python":
        module = diffctl.core.samplers if "SAMPLERS.register" in text else diffctl.core.schedules
        exec(text, vars(module))
    else:
        group, name = re.search(r"/schema_(sampler|schedule)_(\w+)@", text).groups()
        (pathlib.Path(conf) / group).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(conf) / group / f"{name}.yaml").write_text(text)
for command, *args in json.loads(commands):
    code = run_command(command, [*args, f"hydra.searchpath=[file://{conf}]"])
    if code:
        sys.exit(code)
"""


@pytest.fixture
def extended(tmp_path, cache_dir):
    def run(*commands, check=True):
        """Each command is a list [command, *overrides]; all run in one process, in order."""
        env = {"DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(DOC), str(tmp_path / "conf"), json.dumps(commands)], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=600)
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return run


def test_the_worked_examples_sample_and_inspect_from_the_command_line(extended):
    proc = extended(["sample", "ckpt=oracle", "dataset=gmm", "sampler=midpoint", "schedule=loglinear", "steps=12", "num_samples=400"],
                    ["inspect-schedule", "schedule=loglinear", "compare=[cosine]"])
    folder, inspected = [Path(l.split(": ", 1)[1]) for l in proc.stdout.splitlines() if l.startswith("run folder: ")]
    record = json.loads((folder / "sample.json").read_text())
    assert record["sampler"] == "midpoint" and record["nfe"] == 2 * 12 - 1 and record["schedule"] == "loglinear"
    cfg = (folder / "config.yaml").read_text()
    assert "s_mid: 0.5" in cfg and "sigma_min: 0.01" in cfg and "sigma_max: 100.0" in cfg  # defaults from the signatures
    assert "loglinear" in json.dumps(json.loads((inspected / "schedule.json").read_text()))


@pytest.mark.slow  # an order of accuracy, measured at its size in a process with the worked plug-ins (4 s)
def test_the_worked_sampler_is_second_order_against_the_shipped_heun(extended):
    """On the exact denoiser of the 2-D mixture, the midpoint rule and EDM's Heun solve the same ODE: their
    samples agree more closely as steps double, by about 4x per doubling (both second order)."""
    import numpy as np

    grid = [(steps, s) for steps in (8, 16, 32) for s in ("midpoint", "heun")]
    proc = extended(*[["sample", "ckpt=oracle", "dataset=gmm", "schedule=loglinear", f"sampler={s}", f"steps={steps}", "num_samples=200",
                       "sampler.spacing=karras"] for steps, s in grid])
    folders = [Path(l.split(": ", 1)[1]) for l in proc.stdout.splitlines() if l.startswith("run folder: ")]
    x = [np.load(f / "samples.npz")["x"] for f in folders]
    gaps = [float(np.abs(x[i] - x[i + 1]).max()) for i in range(0, len(x), 2)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[1] / gaps[2] > 2.5, gaps


def test_the_worked_options_are_typed_and_checked(extended):
    proc = extended(["sample", "ckpt=oracle", "dataset=gmm", "sampler=midpoint", "sampler.s_mid=abc"], check=False)
    assert proc.returncode == 2 and "sampler.s_mid" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
