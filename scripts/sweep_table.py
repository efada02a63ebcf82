"""Evaluate every job of a ``diffctl train -m`` sweep and write one comparison table.

    python scripts/sweep_table.py outputs/train/multirun/<date>/<time> [eval overrides ...]

Runs ``diffctl eval ckpt=<job>`` for each job folder (extra arguments are passed to eval, e.g.
``steps=100``; the metrics default to test_loss and fd_ref), then writes ``sweep_table.md`` and ``sweep_table.json`` into the sweep folder:
one row per job with its overrides, final training loss, test loss (eps-space and in the
model's own target), fd_ref with its floor, and the number of classes present.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def evaluate(job: Path, extra: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "diffctl", "eval", f"ckpt={job}", *extra], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"eval of {job} failed:\n{proc.stderr}")
    folder = re.findall(r"^run folder: (.*)$", proc.stdout, re.M)[-1]
    return json.loads((Path(folder) / "metrics.json").read_text())


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    sweep, extra = Path(sys.argv[1]), sys.argv[2:]
    if not any(a.startswith("metrics=") for a in extra):
        extra.append("metrics=[test_loss,fd_ref]")
    jobs = sorted((p for p in sweep.iterdir() if (p / "checkpoints").is_dir()), key=lambda p: int(p.name) if p.name.isdigit() else p.name)
    if not jobs:
        raise SystemExit(f"no job folders with checkpoints under {sweep}")
    rows = []
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split("\n")
        log = [json.loads(l) for l in (job / "metrics.jsonl").read_text().splitlines()]
        report = evaluate(job, extra)
        m = report["metrics"]
        row = {"job": job.name, "overrides": " ".join(o for o in overrides if o), "train_loss": log[-1]["loss"],
               "train_seconds": round(log[-1]["time"] - log[0]["time"], 1), "test_loss_eps": m["test_loss"]["value"],
               "test_loss_target": m["test_loss"]["target_mse"]}
        if "fd_ref" in m:
            row.update(fd_ref=m["fd_ref"]["value"], fd_ref_std=m["fd_ref"].get("err"), fd_floor=m["fd_ref"]["floor"],
                       classes=m["fd_ref"]["classes_present"])
        row.update(sampler=f"{report['sampler']}-{report['steps']}", samples=report["num_samples"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = "| job | overrides | train loss (own target) | test loss, eps-MSE | test loss, own target | fd_ref (floor) | classes |\n|---|---|---|---|---|---|---|\n"
    lines = [f"| {r['job']} | `{r['overrides']}` | {r['train_loss']:.4f} | {r['test_loss_eps']:.4f} | {r['test_loss_target']:.4f} | "
             + (f"{r['fd_ref']:.2f} ± {r['fd_ref_std'] or 0:.2f} ({r['fd_floor']:.2f}) | {r['classes']}/10" if "fd_ref" in r else "n/a | n/a")
             + " |" for r in rows]
    table = header + "\n".join(lines) + f"\n\nfd_ref: {rows[0]['sampler']}, {rows[0]['samples']} samples per job, in chunks of 300 (± jackknife error); floor: held-out test images at the same count.\n"
    (sweep / "sweep_table.md").write_text(table)
    (sweep / "sweep_table.json").write_text(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
