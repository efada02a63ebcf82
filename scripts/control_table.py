"""Table and plot of an evaluation sweep of a ControlNet over control.scale.

    diffctl eval -m ckpt=<controlnet run> control.scale=0,0.5,1,2 "metrics=[fd_ref]"
    python scripts/control_table.py outputs/eval/multirun/<date>/<time>

Reads every job's ``metrics.json`` and writes ``control.md`` and ``control.png`` into the sweep folder:
per scale, control fidelity (edge F1, mask IoU or half-resolution PSNR of the samples against their
controls) with the real images' ceiling, and fd_ref with its real-vs-real floor. Scale 0 is the frozen
base model, so its row is the no-control floor; fidelity bought with realism shows as a rising fd_ref.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sweep = Path(sys.argv[1])
    reports = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    reports = [r for r in reports if "control" in r]
    if not reports:
        raise SystemExit(f"no ControlNet */metrics.json under {sweep}: pass the folder of a 'diffctl eval -m ckpt=<controlnet run> control.scale=...' sweep")
    reports.sort(key=lambda r: r["control"]["scale"])
    fid = reports[0]["metrics"]["control_fidelity"]
    pm = lambda m: f"{m['value']:.3f} ± {m['err']:.3f}" if m else ""
    lines = [f"| control.scale | {fid['unit']} | fd_ref |", "|---|---|---|"]
    for r in reports:
        lines.append(f"| {r['control']['scale']:g} | {pm(r['metrics']['control_fidelity'])} | {pm(r['metrics'].get('fd_ref'))} |")
    fd = reports[0]["metrics"].get("fd_ref")
    text = "\n".join(lines) + (f"\n\n{reports[0]['num_samples']} samples per scale, control={reports[0]['control']['kind']}; scale 0 is the "
                               f"base model without control; real images: {fid['unit']} {fid['floor']:.3f}"
                               + (f", fd_ref {fd['floor']:.2f} ± {fd['floor_err']:.2f}" if fd else "") + ".\n")
    (sweep / "control.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["control"]["scale"] for r in reports]
    fig, axes = plt.subplots(1, 2 if fd else 1, figsize=(9 if fd else 4.5, 3.5), dpi=110, squeeze=False)
    ax = axes[0][0]
    ax.errorbar(scales, [r["metrics"]["control_fidelity"]["value"] for r in reports],
                yerr=[r["metrics"]["control_fidelity"]["err"] for r in reports], marker="o")
    ax.axhline(fid["floor"], color="gray", ls="--", label="real images (ceiling)")
    ax.axhline(reports[0]["metrics"]["control_fidelity"]["value"] if scales[0] == 0 else float("nan"), color="tab:red", ls=":",
               label="base, no control (floor)")
    ax.set(xlabel="control.scale", ylabel=fid["unit"], title="control fidelity")
    ax.legend(fontsize=7)
    if fd:
        ax = axes[0][1]
        ax.errorbar(scales, [r["metrics"]["fd_ref"]["value"] for r in reports], yerr=[r["metrics"]["fd_ref"]["err"] for r in reports], marker="o")
        ax.axhline(fd["floor"], color="gray", ls="--", label="real vs real")
        ax.set(xlabel="control.scale", ylabel="fd_ref (lower is better)", title="realism")
        ax.legend(fontsize=7)
    fig.suptitle(f"ControlNet ({reports[0]['control']['kind']}) on {reports[0]['control']['base']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(sweep / "control.png")
    print(f"wrote {sweep / 'control.md'} and {sweep / 'control.png'}")


if __name__ == "__main__":
    main()
