"""``diffctl runs`` and ``diffctl compare``: what each run folder holds, what tells runs apart, and their
curves and metrics side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from .errors import UsageError
from .io.checkpoint import list_checkpoints
from .io.files import MAX_JSON_BYTES, json_lines, read_bytes, read_json
from .io.rundir import CKPT_DIR, run_task

PICTURE_FORMATS = (".png", ".pdf", ".svg")  # what diffctl compare --out writes
IGNORED = ("hydra.", "paths.", "resume", "device")  # overrides that do not change what a run is


def overrides(folder: Path) -> list[str]:
    """The command-line overrides a run was started with (Hydra's record), but those of paths and devices."""
    try:
        items = yaml.safe_load(read_bytes(folder / ".hydra" / "overrides.yaml", "overrides", 1 << 20)) or []
    except (UsageError, yaml.YAMLError, RecursionError):
        return []
    return [str(o) for o in items if isinstance(o, str) and not o.lstrip("+~").startswith(IGNORED)] if isinstance(items, list) else []


def _records(folder: Path) -> list[dict]:
    """A run's metrics.jsonl records that have a step (a bad, torn or foreign line is skipped: a listing never fails)."""
    try:
        rows = json_lines(folder / "metrics.jsonl", "metrics.jsonl", 16 * MAX_JSON_BYTES)
    except UsageError:
        return []
    return [r for _, r in rows if isinstance(r, dict) and isinstance(r.get("step"), int) and not isinstance(r["step"], bool)]


def _metrics(folder: Path) -> dict:
    try:
        return read_json(folder / "metrics.json", "metrics.json")
    except UsageError:
        return {}


def _summary(report: dict) -> str:
    """``fd_ref 11.4, test_loss 0.136``: the headline numbers of an eval report."""
    parts = []
    metrics = report.get("metrics")
    for name in ("fd_ref", "swd", "test_loss", "vlb", "fid"):
        entry = metrics.get(name) if isinstance(metrics, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{name} {value:.4g}")
    return ", ".join(parts)


def _evaluations(folders: list[Path]) -> dict:
    """train run folder -> the newest eval report of one of its checkpoints, among ``folders`` (newest first)."""
    evals = {}
    for folder in folders:
        report = _metrics(folder)
        if isinstance(report.get("checkpoint"), str) and "\0" not in report["checkpoint"]:
            try:
                evals.setdefault(Path(report["checkpoint"]).parent.parent.resolve(), report)
            except (OSError, RuntimeError):  # a path in a loop of links
                continue
    return evals


# What a training loss means: runs that differ in one average other errors over other noise levels, so their raw losses
# do not compare (their held-out x0 error at common noise levels, heldout_x0_mse, does).
OBJECTIVE = ("task", "schedule", "loss", "model.prediction", "model.sigma_data", "latent.autoencoder")


def _objective(folder: Path) -> dict:
    """The OBJECTIVE entries of a run's config.yaml, flattened (``{"schedule.name": "cosine", ...}``); {} if unreadable."""
    try:
        config = yaml.safe_load(read_bytes(folder / "config.yaml", "config.yaml", 1 << 22)) or {}
    except (UsageError, yaml.YAMLError, RecursionError):
        return {}
    out = {}
    for key in OBJECTIVE:
        node = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        items = node.items() if isinstance(node, dict) else [("", node)]
        out.update({f"{key}.{k}" if k else key: str(v) for k, v in items})
    return out


def objective_differences(folders: list[Path]) -> list[str]:
    """The OBJECTIVE keys in which the runs differ, e.g. ``["schedule.name"]``."""
    objectives = [_objective(f) for f in folders]
    keys = sorted(set().union(*objectives)) if objectives else []
    return [k for k in keys if len({o.get(k) for o in objectives}) > 1]


def _row(folder: Path, root: Path, evals: dict) -> dict:
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        names = set()
    holds = [k for k in ("FAILED", "samples", "grid.png", "metrics.json", "schedule.png", "model.safetensors") if k in names]
    command = folder.relative_to(root).parts[0] if folder.is_relative_to(root) else "?"
    if command == "train" and run_task(folder) != "diffusion":
        command += f" ({run_task(folder)})"
    ckpts = list_checkpoints(folder / CKPT_DIR)
    records = [r for r in _records(folder) if "event" not in r]
    last = lambda key: next((r[key] for r in reversed(records) if isinstance(r.get(key), (int, float))), None)
    try:
        report = _metrics(folder) if command == "eval" else evals.get(folder.resolve(), {})
    except (OSError, RuntimeError):
        report = {}
    return {"command": command, "folder": folder, "overrides": overrides(folder), "step": int(ckpts[-1].stem.split("_")[1]) if ckpts else None,
            "loss": last("loss"), "heldout": last("heldout_loss"), "eval": _summary(report), "holds": holds, "records": records}


def run_folders(root: Path) -> list[Path]:
    """Every run folder under ``root`` (single runs and sweep jobs), newest first."""
    found = {}
    for p in Path(root).glob("*/**/config.yaml"):
        try:
            if p.parent.name != ".hydra" and p.is_file():
                found[p.parent] = p.stat().st_mtime
        except OSError:  # a link in a loop, a file gone meanwhile
            continue
    return sorted(found, key=found.get, reverse=True)


def describe(root: Path) -> list[dict]:
    """Every run under ``root``, newest first: command, folder, distinguishing overrides, last checkpoint step,
    last training and held-out loss, the latest evaluation of its checkpoints (train runs), what it holds."""
    folders = run_folders(root)
    evals = _evaluations(folders)
    return [_row(folder, Path(root), evals) for folder in folders]


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def print_runs(root: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = ("command", "run folder", "overrides", "step", "loss", "held-out", "eval", "holds")
    rows = [(r["command"], str(r["folder"]), " ".join(r["overrides"]), _fmt(r["step"]), _fmt(r["loss"]), _fmt(r["heldout"]), r["eval"],
             ", ".join(r["holds"])) for r in describe(root)]
    if not sys.stdout.isatty():  # piped or logged: whole paths, one run per line, tab-separated, a header first
        print("\t".join(columns))
        for row in rows:
            print("\t".join(row))
        return
    table = Table(*columns)
    table.columns[1].overflow = "fold"  # the path is what users copy: never truncate it
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def compare(folders: list[Path], out: Path, root: Path) -> Path:
    """One PNG: the training (solid) and held-out (dashed) loss curves of ``folders``, and their latest eval
    numbers (from the eval runs under ``root``); each run is labelled by the overrides that tell it apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out = out / "compare.png" if out.is_dir() else out if out.suffix else out.with_name(out.name + ".png")
    if out.suffix.lower() not in PICTURE_FORMATS:
        raise FileNotFoundError(f"--out {out}: a picture is written as {', '.join(PICTURE_FORMATS)}; give a file name ending in one of them")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")
    evals = _evaluations(run_folders(root))
    runs = []
    for folder in map(Path, folders):
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"{folder} is not a run folder (it has no config.yaml)")
        runs.append(_row(folder, Path(root), evals))
    shared = set.intersection(*(set(r["overrides"]) for r in runs)) if runs else set()
    labels = [" ".join(o for o in r["overrides"] if o not in shared) or r["folder"].name for r in runs]
    common = any(isinstance(r.get("heldout_x0_mse"), (int, float)) for run in runs for r in run["records"])
    differ = objective_differences([r["folder"] for r in runs])
    fig, axes = plt.subplots(1, 2 + common, figsize=(16 if common else 12, 5), dpi=100, gridspec_kw={"width_ratios": [2, 2, 1][-(2 + common):]})
    curves, bars = axes[0], axes[-1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10
    for label, run, color in zip(labels, runs, colors):
        series = lambda key: [(r["step"], r[key]) for r in run["records"] if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        if series("loss"):
            curves.plot(*zip(*series("loss")), color=color, label=label, alpha=0.6 if differ else 1.0)
        if series("heldout_loss"):
            curves.plot(*zip(*series("heldout_loss")), color=color, ls="--", marker="o", ms=3, alpha=0.6 if differ else 1.0)
        if common and series("heldout_x0_mse"):
            axes[1].plot(*zip(*series("heldout_x0_mse")), color=color, marker="o", ms=3, label=label)
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("loss (solid: training, dashed: held-out)")
    curves.grid(alpha=0.3, which="both")
    if differ:  # each run's loss averages its own weighting over its own noise levels: one axis would suggest a ranking
        groups = sorted({k.split(".")[0] if not k.startswith("model.") else k for k in differ})
        curves.set_title(f"training losses: NOT comparable (the runs differ in {', '.join(groups)})", color="firebrick", fontsize=9)
    else:
        curves.set_title("training and held-out loss", fontsize=9)
    if common:
        axes[1].set_yscale("log")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("held-out x0 MSE")
        axes[1].set_title("held-out x0 error at 8 common noise levels (sigma 0.05-10): comparable", fontsize=9)
        axes[1].grid(alpha=0.3, which="both")
    handles, names = curves.get_legend_handles_labels()
    if handles:  # under the plots, never over a curve
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    evals = [r["eval"] for r in runs]
    bars.axis("off")
    bars.set_title("latest evaluation")
    bars.text(0, 1, "\n\n".join(f"{label}:\n  {e or 'not evaluated'}" for label, e in zip(labels, evals)), va="top", family="monospace", fontsize=8,
              transform=bars.transAxes)
    fig.suptitle(f"{len(runs)} runs" + (f"; shared: {' '.join(sorted(shared))}" if shared else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) - 1) // 4), 1, 1))
    fig.savefig(out)
    plt.close(fig)
    return out
