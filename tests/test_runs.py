"""diffctl runs tells sweep jobs apart at a glance; diffctl compare draws their curves and numbers in one PNG."""

from pathlib import Path

from conftest import TINY_TRAIN, run_folder
from PIL import Image


def test_runs_and_compare_show_what_tells_sweep_jobs_apart(diffctl, tmp_path):
    diffctl("train", "-m", "optim.lr=0.002,0.0005", *TINY_TRAIN, "trainer.eval_every=2", "trainer.log_every=1")
    jobs = sorted(p for p in (diffctl.root / "train" / "multirun").glob("*/*/*") if p.is_dir())
    run_folder(diffctl("eval", f"ckpt={jobs[1]}", "metrics=[test_loss]"))
    lines = diffctl("runs", "--output-root", str(diffctl.root)).stdout.splitlines()
    header, rows = lines[0].split("\t"), [dict(zip(lines[0].split("\t"), l.split("\t"))) for l in lines[1:]]
    assert header == ["command", "run folder", "overrides", "step", "loss", "held-out", "eval", "holds"]
    by_folder = {Path(r["run folder"]): r for r in rows}
    first, second = by_folder[jobs[0]], by_folder[jobs[1]]
    assert "optim.lr=0.002" in first["overrides"] and "optim.lr=0.0005" in second["overrides"] and "paths." not in first["overrides"]
    assert first["step"] == second["step"] == "4" and float(first["loss"]) > 0 and float(first["held-out"]) > 0
    assert first["eval"] == "" and second["eval"].startswith("test_loss ")  # the eval of job 1's checkpoint, shown on its row
    out = tmp_path / "cmp.png"
    proc = diffctl("compare", str(jobs[0]), str(jobs[1]), "--out", str(out), "--output-root", str(diffctl.root))
    assert f"compare: {out}" in proc.stdout and Image.open(out).size == (1600, 500)  # with the held-out x0 error panel
    bad = diffctl("compare", str(tmp_path), "--out", str(out), check=False)
    assert bad.returncode == 2 and "is not a run folder" in bad.stderr
