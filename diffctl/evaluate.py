"""``diffctl eval``: run the registered metrics that apply to a checkpoint's dataset."""

from __future__ import annotations

import importlib.metadata
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from .data import load_dataset, quantize
from .errors import UsageError
from .io.images import save_grid, save_scatter
from .io.rundir import resolve_checkpoint, write_json
from .metrics import METRICS, EvalContext
from .progress import progress_bar
from .runtime import load_trained, resolve_device
from .sample import generate

log = logging.getLogger("diffctl.eval")


def _versions() -> dict:
    out = {}
    for pkg in ("diffctl", "torch", "numpy", "scikit-learn"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _side_by_side(real: torch.Tensor, fake: torch.Tensor, path: Path) -> None:
    """real | generated: two grids of 64 in one PNG (images), or overlaid scatter plots (2-D)."""
    if real.ndim == 4:
        n = min(64, len(real), len(fake))
        gap = torch.zeros(8, *real.shape[1:])
        rows = [torch.cat([real[r * 8:(r + 1) * 8], gap[:1], fake[r * 8:(r + 1) * 8]]) for r in range(n // 8)]
        save_grid(torch.cat(rows), path, nrow=17)
    else:
        save_scatter(fake, path, reference=real, title="test split (grey) vs generated (blue)")


def run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    device = resolve_device(cfg.device)
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric(s) {unknown}; choose from: {', '.join(METRICS)}")
    ckpt = resolve_checkpoint(cfg.ckpt, Path(cfg.paths.output_root))
    trained = load_trained(ckpt, device, ema=cfg.ema)
    data = load_dataset(trained.cfg.dataset)
    timings, cache = {}, {}

    def samples() -> torch.Tensor:
        if "x" not in cache:
            t0 = time.perf_counter()
            total = cfg.steps * ((cfg.num_samples + cfg.batch_size - 1) // cfg.batch_size)
            with progress_bar(f"sampling {cfg.sampler.name}", total) as advance:
                x, info = generate(trained.net, trained.alpha_bar, trained.cfg.model.prediction, cfg.sampler, cfg.steps,
                                   cfg.num_samples, data.shape, seed=cfg.seed, batch_size=cfg.batch_size, device=device, on_step=advance)
            cache["x"], cache["info"] = quantize(x, data.levels), info
            timings["sampling"] = round(time.perf_counter() - t0, 3)
        return cache["x"]

    ctx = EvalContext(trained.net, trained.alpha_bar, trained.cfg.model.prediction, data, samples, Path(cfg.paths.cache_dir), cfg.seed, device)
    results, skipped = {}, {}
    for name in cfg.metrics:
        metric = METRICS[name]
        reason = metric.applies(data)
        if reason:
            skipped[name] = reason
            continue
        if metric.uses_samples:
            samples()
        t0 = time.perf_counter()
        results[name] = {**metric.fn(ctx), "version": metric.version, "seed": cfg.seed}
        timings[name] = round(time.perf_counter() - t0, 3)
    report = {
        "checkpoint": str(ckpt), "checkpoint_step": trained.step, "dataset": data.name, "ema": cfg.ema,
        "sampler": cache.get("info", {}).get("sampler"), "steps": cfg.steps if "info" in cache else None,
        "nfe": cache.get("info", {}).get("nfe"), "num_samples": cfg.num_samples if "info" in cache else 0,
        "metrics": results, "skipped": skipped, "seconds": timings, "versions": _versions(),
    }
    write_json(run_dir / "metrics.json", report)
    if "x" in cache:
        _side_by_side(data.test, cache["x"], run_dir / "real_vs_generated.png")
    _print_table(report)
    return report


def _print_table(report: dict) -> None:
    table = Table(title=f"{report['dataset']} @ step {report['checkpoint_step']}"
                        + (f" — {report['sampler']} {report['steps']} steps, {report['num_samples']} samples" if report["sampler"] else ""))
    for col in ("metric", "value", "floor (real vs real)", "n", "notes"):
        table.add_column(col)
    for name, r in report["metrics"].items():
        notes = []
        if "std_over_chunks" in r:
            notes.append(f"±{r['std_over_chunks']:.3g} over {r['chunks']} chunks")
        if "classes_present" in r:
            notes.append(f"{r['classes_present']}/{len(r['class_histogram'])} classes; ref acc {r['reference']['test_accuracy']:.3f}")
        floor = r.get("floor")
        table.add_row(name, f"{r['value']:.4g}", "" if floor is None else f"{floor:.4g}", str(r["n"]), "; ".join(notes))
    for name, reason in report["skipped"].items():
        table.add_row(name, "skipped", "", "", reason)
    Console().print(table)
