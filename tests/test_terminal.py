"""On a terminal: the training bar shows img/s, loss and lr; log lines print above it, never into its line; the log
file keeps every step line whatever the terminal shows. Run under a real pseudo-terminal."""

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

import pytest
from conftest import TINY_TRAIN

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def run_on_a_terminal(args, env, cwd) -> str:
    """Run ``args`` with stdin, stdout and stderr on one pseudo-terminal of 160 columns; returns what it printed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


@pytest.mark.slow
def test_the_training_bar_and_the_log_share_the_terminal_and_the_log_file_keeps_the_step_lines(tmp_path):
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs"), "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    shown = run_on_a_terminal([sys.executable, "-m", "diffctl", "train", *TINY_TRAIN, "trainer.log_every=1", "trainer.steps=6"], env, tmp_path)
    text = ANSI.sub("", shown)
    assert "img/s" in text and "lr 0.00" in text and "loss " in text  # the bar's rate and status
    log = next((tmp_path / "outputs" / "train").glob("*/*/train.log")).read_text()
    assert all(f"step {s}/6: loss" in log for s in range(1, 7))  # the file has every step line ...
    assert "step 3/6: loss" not in text  # ... the terminal shows them in the bar instead
    assert "done: 6 steps" in text  # other log lines print in full
    for fragment in re.split(r"[\r\n]", text):  # every log line starts a line of its own, not inside the bar's
        if "[diffctl." in fragment:
            assert re.match(r"\s*\[\d{4}-\d\d-\d\d ", fragment), fragment


@pytest.mark.slow
def test_eval_shows_its_stages_on_a_terminal_and_logs_each_metric_as_it_is_done(tmp_path, cache_dir):
    env = {**os.environ, "DIFFCTL_OUTPUT_ROOT": str(tmp_path / "outputs"), "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    run_on_a_terminal([sys.executable, "-m", "diffctl", "train", *TINY_TRAIN], env, tmp_path)
    shown = run_on_a_terminal([sys.executable, "-m", "diffctl", "eval", "ckpt=latest", "num_samples=300", "steps=3",
                               "metrics=[test_loss,fd_ref,prdc_ref]", f"paths.cache_dir={cache_dir}"], env, tmp_path)
    text = ANSI.sub("", shown)
    assert re.search(r"eval .*\d/3", text) and "running fd_ref" in text  # the stages' bar, the running one named
    assert "sampling ddim x3" in text  # the sampling bar, under it
    log = next((tmp_path / "outputs" / "eval").glob("*/*/eval.log")).read_text()
    assert re.search(r"test_loss: 0\.\d+ \(\d+\.\d s\)", log) and re.search(r"fd_ref \(ddim x3\): [\d.]+ ± [\d.]+", log), log
    assert re.search(r"prdc_ref \(ddim x3\): precision [\d.]+ ± [\d.]+, recall", log), log
    assert "better" in text and "one standard error" in text  # the table's column and caption
