"""scripts/bench.py --peer diffusers (diffusers' UNet2DModel in the same layout, through the same training step)
and --trainer (diffctl's Trainer.train_step on the same settings), and their one-line errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "unet_tiny", "--steps", "2", "--sample-steps", "2", "--sample-batch", "4", "--batch", "8"]


def _bench(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [[], ["--size", "16", "--channels", "3"]], ids=["digits_1x8x8", "folder_3x16x16"])
def test_bench_times_the_diffusers_peer_and_the_trainer_in_one_run(tmp_path, shape):
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    proc = _bench(*TINY, *shape, "--peer", "diffusers", "--trainer", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    for key in ("train_img_per_s", "trainer_img_per_s", "peer_train_img_per_s", "train_speedup_vs_peer"):
        assert isinstance(record[key], (int, float)) and math.isfinite(record[key]) and record[key] > 0, (key, record[key])
        assert key in proc.stdout
    assert math.isfinite(record["trainer_overhead"]) and record["trainer_overhead"] < 1
    assert record["shape"] == ([3, 16, 16] if shape else [1, 8, 8])
    # the layouts are the same: diffusers' UNet2DModel has exactly diffctl's parameter count (only GroupNorm groups differ)
    assert record["peer_parameters"] == record["parameters"] > 0
    assert all("GroupNorm" in d for d in record["peer_layout_differences"]), record["peer_layout_differences"]


def test_bench_peer_without_diffusers_is_a_one_line_error_naming_the_extra(tmp_path):
    shadow = tmp_path / "shadow" / "diffusers"  # an importable 'diffusers' that fails as a missing one does
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named diffusers')\n")
    proc = _bench(*TINY, "--peer", "diffusers", env={"PYTHONPATH": str(shadow.parent)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'diffctl[diffusers]'" in lines[0]


def test_bench_trainer_without_a_dataset_of_the_shape_is_a_one_line_error():
    proc = _bench(*TINY, "--channels", "2", "--trainer")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "[2, 8, 8]" in lines[0] and "--trainer" in lines[0]
