"""Training throughput with the training images in memory against streamed from their files (dataset.in_memory).

    python scripts/stream_bench.py [--images 1797] [--size 32] [--steps 60] [--model unet_small] [--threads 2] [--repeat 2] [--out bench_stream]

Writes the 8x8 digits, upscaled to ``--size`` px RGB PNGs, as a folder dataset (two class folders), then trains
``--steps`` steps of ``--model`` on it in memory and streamed with 0, 1 and 2 DataLoader workers, each in a fresh
process with ``--threads`` torch threads. Reports img/s (the median of the logged windows after the first, so start-up
and the workers' first reads are left out), and checks that all runs logged the same losses (one trajectory).
Writes ``stream.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def write_folder(root: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(min(n, len(digits.images))):
        folder = root / f"c{digits.target[i] % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8)).resize((size, size), Image.BICUBIC).convert("RGB")
        img.save(folder / f"{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1797)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--model", default="unet_small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_stream"))
    args = ap.parse_args()
    root = args.out / "images"
    if not root.is_dir():
        write_folder(root, args.images, args.size)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DIFFCTL_OUTPUT_ROOT": str(args.out / "outputs")}
    common = ["dataset=folder", f"dataset.root={root}", f"dataset.image_size={args.size}", f"model={args.model}", f"trainer.steps={args.steps}",
              f"trainer.batch_size={args.batch}", "trainer.log_every=10", "trainer.eval_every=0", "trainer.sample_every=0", "trainer.ckpt_every=0",
              "trainer.num_grid=4", "trainer.sample_steps=2", "trainer.precision=fp32", "logger=none"]
    modes = {"in memory": ["dataset.in_memory=true"], **{f"streamed, {w} workers": ["dataset.in_memory=false", f"dataset.workers={w}"] for w in (0, 1, 2)}}
    best, losses = {}, {}
    for rep in range(args.repeat):  # the modes in turn, repeated: a burst of other load hits one try, not one mode
        for name, opts in modes.items():
            run = args.out / "runs" / f"{name.replace(', ', '_').replace(' ', '_')}_{rep}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "diffctl", "train", *common, *opts, f"hydra.run.dir={run}"], env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{name}: failed\n{proc.stderr[-2000:]}")
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            records = [r for r in records if "img_per_s" in r]
            losses[f"{name} {rep}"] = [r["loss"] for r in records]
            rate, wall = statistics.median(r["img_per_s"] for r in records[1:]), time.perf_counter() - t0
            best[name] = max(best.get(name, (0, 0)), (rate, wall))
            print(f"{name} (try {rep + 1}): {rate:.0f} img/s, {wall:.1f} s in all", flush=True)
    rows = [(name, *best[name]) for name in modes]
    same = len({tuple(v) for v in losses.values()}) == 1
    base = rows[0][1]
    lines = ["| training images | img/s | vs in memory | wall (s, start-up included) |", "|---|---|---|---|"]
    lines += [f"| {n} | {r:.0f} | {r / base:.2f}x | {w:.1f} |" for n, r, w in rows]
    text = (f"{min(args.images, 1797)} {args.size}x{args.size} RGB PNGs, model={args.model}, batch {args.batch}, {args.steps} steps, fp32, "
            f"{args.threads} torch threads, {os.cpu_count()} CPUs; img/s is the median of the logged windows after the first, the best of "
            f"{args.repeat} tries taken in turn.\n\n"
            + "\n".join(lines) + f"\n\nSame logged losses in every mode: {'yes' if same else 'NO'}.\n")
    (args.out / "stream.md").write_text(text)
    print(text)
    if not same:
        raise SystemExit("the modes logged different losses: streaming broke the trajectory")


if __name__ == "__main__":
    main()
