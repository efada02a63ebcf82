"""scripts/guidance_table.py on sweeps evaluated with and without prdc_ref (it crashed without it)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "guidance_table.py"


def _job(folder: Path, w: float, prdc: bool) -> None:
    metrics = {"cond_acc": {"value": 0.5 + w / 10, "err": 0.01, "floor": 0.98},
               "fd_ref": {"value": 10 + w, "err": 1.0, "floor": 7.0, "floor_err": 2.0}}
    if prdc:
        metrics["prdc_ref"] = {"value": 0.8, "err": 0.02, "recall": 0.9 - w / 20, "errors": {"precision": 0.02, "recall": 0.02},
                               "precision": 0.8, "floor_all": {"precision": 0.87, "recall": 0.93}}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "guidance": {"scale": w, "rescale": 0.0}, "nfe": 100,
                                                     "num_samples": 300}))


@pytest.mark.parametrize("prdc", [False, True])
def test_guidance_table_tabulates_whatever_metrics_the_sweep_has(tmp_path, prdc):
    for i, w in enumerate((0.0, 1.0, 3.0)):
        _job(tmp_path / str(i), w, prdc)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in (tmp_path / "guidance.md").read_text().splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "1", "3"]
    assert "13.000 ± 1.000" in rows[2] and ("0.750 ± 0.020" in rows[2]) == prdc  # fd_ref of w = 3; recall only when measured
    assert (tmp_path / "guidance.png").stat().st_size > 0


def test_control_table_orders_scales_and_reports_the_ceiling(tmp_path):
    for i, s in enumerate((2.0, 0.0, 1.0)):
        folder = tmp_path / str(i)
        folder.mkdir()
        metrics = {"control_fidelity": {"value": 0.3 + s / 4, "err": 0.01, "floor": 1.0, "unit": "F1 of edge pixels"},
                   "fd_ref": {"value": 5 + s, "err": 1.0, "floor": 7.0, "floor_err": 2.0}}
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "control": {"kind": "edges", "scale": s, "base": "b.pt"},
                                                         "num_samples": 300}))
    script = SCRIPT.parent / "control_table.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "control.md").read_text()
    rows = [l for l in text.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "1", "2"] and "0.800 ± 0.010" in rows[2] and "7.000 ± 1.000" in rows[2]
    assert "real images: F1 of edge pixels 1.000" in text and (tmp_path / "control.png").stat().st_size > 0


def test_guidance_table_of_a_prompt_sweep_has_a_row_per_prompt_set_and_scale(tmp_path):
    for i, (prompts, w) in enumerate((("train", 2.0), ("heldout", 1.0), ("train", 1.0), ("heldout", 2.0))):
        _job(tmp_path / str(i), w, False)
        path = tmp_path / str(i) / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "prompts": prompts}))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [l.split("|")[1:3] for l in (tmp_path / "guidance.md").read_text().splitlines() if l.startswith("| ") and not l.startswith("| prompts")]
    assert [(p.strip(), w.strip()) for p, w in rows] == [("heldout", "1"), ("heldout", "2"), ("train", "1"), ("train", "2")]
