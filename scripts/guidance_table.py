"""Table and plot of an evaluation sweep over guidance scales (classifier-free w or classifier s).

    diffctl eval -m ckpt=<conditional run> classes=all guidance.scale=0,1,2,4 metrics=[cond_acc,fd_ref,prdc_ref]
    diffctl eval -m ckpt=<run> classes=all guidance.classifier=<classifier run> guidance.classifier_scale=0,1,2,4 metrics=[...]
    python scripts/guidance_table.py outputs/eval/multirun/<date>/<time>

Reads every job's ``metrics.json`` and writes ``guidance.md`` and ``guidance.png`` into the sweep
folder: per guidance scale, the conditional accuracy (the reference classifier agrees with the
requested class), fd_ref (quality and diversity against the train split) and precision / recall,
each with its error bar and real-vs-real floor. The trade-off of guidance is visible there:
accuracy and precision go up with the scale while recall (diversity) goes down and fd_ref rises.
A sweep whose jobs use a classifier is tabulated over the classifier scale s. A text-conditioned
model's sweep over prompts too (``-m prompts=train,heldout guidance.scale=1,2,3``) gets a prompts
column and one curve per prompt set.
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
    if not reports:
        raise SystemExit(f"no */metrics.json under {sweep}: pass the folder of a 'diffctl eval -m guidance.scale=...' sweep")
    kind = "classifier_scale" if any("classifier_scale" in r["guidance"] for r in reports) else "scale"
    symbol, axis = ("s", "classifier guidance scale s") if kind == "classifier_scale" else ("w", "guidance scale w")
    group = lambda r: r.get("prompts") if isinstance(r.get("prompts"), str) else ("listed" if r.get("prompts") else "")
    reports.sort(key=lambda r: (group(r), r["guidance"].get("rescale", 0), r["guidance"][kind]))
    prompted = any(group(r) for r in reports)
    pm = lambda m, key="value", err="err": f"{m[key]:.3f} ± {m[err]:.3f}" if m.get(err) is not None else f"{m[key]:.3f}"
    second = "classifier gradients" if kind == "classifier_scale" else "rescale"
    lines = [("| prompts " if prompted else "") + f"| {symbol} | {second} | NFE | cond_acc | fd_ref | precision | recall |",
             ("|---" if prompted else "") + "|---|---|---|---|---|---|---|"]
    rows = []
    for r in reports:
        m, g = r["metrics"], r["guidance"]
        acc, fd, pr = m.get("cond_acc"), m.get("fd_ref"), m.get("prdc_ref")
        rows.append({"w": g[kind], "rescale": g.get("rescale", 0), "acc": acc, "fd": fd, "pr": pr, "group": group(r)})
        recall = f"{pr['recall']:.3f} ± {pr['errors']['recall']:.3f}" if pr else ""
        second_value = r.get("classifier_nfe", 0) if kind == "classifier_scale" else g.get("rescale", 0)
        lines.append((f"| {group(r)} " if prompted else "") + f"| {g[kind]:g} | {second_value:g} | {r['nfe']} | {pm(acc) if acc else ''} | {pm(fd) if fd else ''} | {pm(pr) if pr else ''} | {recall} |")
    first = reports[0]["metrics"]
    floors = []
    if "cond_acc" in first:
        floors.append(f"cond_acc: reference classifier on held-out digits {first['cond_acc']['floor']:.3f}")
    if "fd_ref" in first:
        floors.append(f"fd_ref: {first['fd_ref']['floor']:.2f} ± {first['fd_ref']['floor_err']:.2f}")
    if "prdc_ref" in first:
        f = first["prdc_ref"]["floor_all"]
        floors.append(f"precision {f['precision']:.3f}, recall {f['recall']:.3f}")
    text = "\n".join(lines) + f"\n\n{reports[0]['num_samples']} samples per scale; real-vs-real floors: " + "; ".join(floors) + ".\n"
    (sweep / "guidance.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for name in dict.fromkeys(r["group"] for r in rows):  # one curve per prompt set (one curve without prompts)
        plain = [r for r in rows if r["rescale"] == 0 and r["group"] == name]
        if not plain:
            continue
        w, tag = [r["w"] for r in plain], f"prompts={name}: " if name else ""
        for ax, key, part in ((axes[0], "acc", "value"), (axes[1], "fd", "value"), (axes[2], "pr", None)):
            if part is None and all(r["pr"] for r in plain):
                for metric in ("precision", "recall"):
                    ax.errorbar(w, [r["pr"][metric] for r in plain], yerr=[r["pr"]["errors"][metric] for r in plain], marker="o", capsize=3,
                                label=tag + metric)
            elif part is not None and all(r[key] for r in plain):
                ax.errorbar(w, [r[key]["value"] for r in plain], yerr=[r[key].get("err") or 0 for r in plain], marker="o", capsize=3,
                            label=tag.rstrip(": ") or None)
    first = [r for r in rows if r["rescale"] == 0][:1]
    for ax, key, title in ((axes[0], "acc", "conditional accuracy"), (axes[1], "fd", "fd_ref (lower is better)"), (axes[2], "pr", "precision / recall")):
        if key != "pr" and first and first[0][key]:
            ax.axhline(first[0][key]["floor"], color="gray", ls="--", label="real vs real")
        elif key == "pr" and first and first[0]["pr"]:  # held-out real images against the training split, at the same count
            for metric, color in (("precision", "C0"), ("recall", "C1")):  # the colours of the first prompt set's curves
                ax.axhline(first[0]["pr"]["floor_all"][metric], color=color, ls="--", alpha=0.6, label=f"real vs real {metric}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.set_xlabel(axis)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(sweep / "guidance.png")
    print(f"wrote {sweep / 'guidance.md'} and {sweep / 'guidance.png'}")


if __name__ == "__main__":
    main()
