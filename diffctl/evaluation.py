"""``diffctl eval``: run the registered metrics that apply to a checkpoint (or the oracle).

With ``samplers=[...]`` and/or ``steps=[...]`` it evaluates every sampler at every step count
and writes the quality-vs-NFE table and plot, with the real-vs-real floor drawn.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from .config import load_option
from .data import quantize
from .errors import UsageError
from .io.images import save_grid, save_scatter
from .io.rundir import write_json
from .metrics import METRICS, EvalContext, Skipped, skip_reason
from .progress import progress_bar
from .runtime import load_source, resolve_device
from .steering import describe_guidance, generate_from_config

log = logging.getLogger("diffctl.eval")


def _versions() -> dict:
    out = {}
    for pkg in ("diffctl", "torch", "numpy", "scipy", "scikit-learn", "torch-fidelity"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _side_by_side(real: torch.Tensor, fake: torch.Tensor, path: Path, title: str = "") -> None:
    """real | generated: two grids of 64 in one PNG, headed (images), or overlaid scatter plots (2-D)."""
    if real.ndim == 4:
        k = min(8, len(real), len(fake))  # images per row on each side
        rows = [torch.cat([real[r * k:(r + 1) * k], torch.zeros(1, *real.shape[1:]), fake[r * k:(r + 1) * k]])
                for r in range(min(8, len(real) // k, len(fake) // k))]
        save_grid(torch.cat(rows), path, nrow=2 * k + 1, title=title, headers=[("real (test split)", k), ("", 1), ("generated", k)])
    else:
        save_scatter(fake, path, reference=real, title="test split (grey) vs generated (blue)")


def _grid(cfg: DictConfig) -> list[tuple[DictConfig, int]]:
    """(sampler config, steps) pairs: ``samplers`` x ``steps``; spacing, rho and clip of ``sampler`` apply to all."""
    steps = list(cfg.steps) if OmegaConf.is_list(cfg.steps) else [cfg.steps]  # checked by validation.validate
    configs = []
    for name in cfg.samplers or [cfg.sampler.name]:
        try:
            sc = cfg.sampler if name == cfg.sampler.name else load_option("sampler", name)
        except ValueError as e:
            raise UsageError(f"samplers: {e}") from None
        sc.spacing, sc.rho, sc.clip = cfg.sampler.spacing, cfg.sampler.rho, cfg.sampler.clip
        configs.append(sc)
    return [(sc, n) for sc in configs for n in steps]


def _autoencoder_floor(source, pixels, computed: dict, cfg: DictConfig, device, memo: dict) -> dict:
    """A latent model's floor: each sample metric it got, measured on the autoencoder's reconstructions of the real
    test images (with their own labels), as if they were samples."""
    recon = quantize(source.latent.decode(source.latent.encode(pixels.test.to(device))).cpu(), pixels.levels)
    ctx = EvalContext(source.alpha_bar, pixels, lambda: recon, Path(cfg.paths.cache_dir), cfg.seed, device, memo,
                      options={"inception_weights": cfg.inception_weights}, labels=lambda: pixels.test_labels)
    floor = {}
    for name in computed:
        try:
            floor[name] = METRICS[name].fn(ctx)["value"]
        except (Skipped, ValueError) as e:
            floor[name] = f"skipped: {e}"
    return {"metrics": floor, "n": len(recon), "autoencoder": source.latent.path}


def run_eval(cfg: DictConfig, run_dir: Path) -> dict:
    device = resolve_device(cfg.device)
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric(s) {unknown}; choose from: {', '.join(METRICS)}")
    if cfg.inception_weights and not Path(str(cfg.inception_weights)).expanduser().is_file():
        raise UsageError(f"inception_weights={cfg.inception_weights}: no such file (the TF-Inception weights for fid / kid / is)")
    grid = _grid(cfg)
    source = load_source(cfg, device)
    data = source.data
    pixels = source.pixels if source.latent is not None else data  # a latent model's samples are scored decoded, in pixels
    extra = {"lowres": ("sr_psnr", "sr_ssim", "sr_consistency"), "control": ("control_fidelity",)}.get(getattr(source.cond, "name", None), ())
    cfg.metrics = list(cfg.metrics) + [m for m in extra if m not in cfg.metrics]  # super-resolution and ControlNet: scored against their inputs
    log.info("evaluating %s", source.describe())
    skipped = {m: r for m in cfg.metrics if (r := skip_reason(METRICS[m], pixels if METRICS[m].uses_samples else data, source.net is not None))}
    active = [m for m in cfg.metrics if m not in skipped]
    short = [m for m in active if METRICS[m].equal_count]
    if short and cfg.num_samples < len(pixels.test):  # refused before any sampling
        raise UsageError(f"num_samples={cfg.num_samples}: {', '.join(short)} need{'s' if len(short) == 1 else ''} num_samples >= {len(pixels.test)}, the test split's size, so that "
                         f"their real-vs-real floor is measured at the same count; raise num_samples or leave them out of metrics=[...]")
    rows, once, timings, memo, first = [], {}, {}, {}, None
    stages = len(grid) * sum(METRICS[m].uses_samples for m in active) + sum(not METRICS[m].uses_samples for m in active)
    with progress_bar("eval", stages) as advance:  # a stage per metric and setting; sampling and the vlb show bars of their own under it
        for sampler_cfg, steps in grid:
            rows.append(_evaluate_setting(source, cfg, device, sampler_cfg, steps, active, skipped, once, timings, memo, pixels, advance))
            gen, last = rows[-1].pop("gen"), rows[-1].pop("x")
            first = first or gen
    report = {**source.info, "dataset": data.name, "num_samples": cfg.num_samples, "metrics": {**once, **rows[0]["metrics"]},
              "sampler": rows[0]["sampler"], "steps": rows[0]["steps"], "nfe": rows[0]["nfe"], "classifier_nfe": first.classifier_nfe if first else 0,
              "classes": OmegaConf.to_container(cfg.classes) if OmegaConf.is_list(cfg.classes) else cfg.classes,
              "prompts": cfg.prompt if cfg.prompt is not None else OmegaConf.to_container(cfg.prompts) if OmegaConf.is_list(cfg.prompts) else cfg.prompts,
              "guidance": first.guidance if first and first.guidance is not None else OmegaConf.to_container(cfg.guidance),
              "skipped": skipped, "seconds": {k: round(v, 3) for k, v in timings.items()}, "versions": _versions()}
    if getattr(source.cond, "name", None) == "control":
        report["control"] = {"kind": source.cond.kind, "scale": float(cfg.control.scale), "base": source.cond.base}
    if source.latent is not None:  # what no model decoding through this autoencoder can beat
        report["autoencoder_floor"] = _autoencoder_floor(source, pixels, rows[0]["metrics"], cfg, device, memo)
        log.info("the autoencoder's floor (its reconstructions of the %d test images scored as samples): %s", len(pixels.test),
                 ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report["autoencoder_floor"]["metrics"].items()))
    if len(rows) > 1:
        report["grid"] = rows
    write_json(run_dir / "metrics.json", report)  # first: nothing below may lose the numbers
    if len(rows) > 1:
        _quality_vs_nfe(rows, run_dir, source.label())
    if last is not None:
        r = rows[-1]
        _side_by_side(pixels.test, last, run_dir / "real_vs_generated.png", f"{source.label()}: {r['sampler']}, {r['steps']} steps, NFE {r['nfe']}")
    _print_table(report, rows)
    return report


def _evaluate_setting(source, cfg, device, sampler_cfg, steps: int, active: list, skipped: dict, once: dict, timings: dict, memo: dict,
                      pixels, advance) -> dict:
    """The metrics of one (sampler, steps) setting: its row, with the Generated samples ("gen") and the images scored ("x");
    metrics that need no samples go into ``once``, the first time only."""
    data = source.data
    cache = {}

    def samples() -> torch.Tensor:
        if "x" not in cache:
            cache["gen"] = gen = generate_from_config(source, cfg, device, steps, sampler_cfg)
            timings[f"sampling {sampler_cfg.name}x{steps}"] = gen.seconds
            cache["x"] = quantize(gen.samples if source.latent is None else source.decode(gen.samples), pixels.levels)
        return cache["x"]

    def labels():
        samples()
        return cache["gen"].labels

    def conditioning():
        samples()
        return cache["gen"].conditioning

    ctx = EvalContext(source.alpha_bar, data, samples, Path(cfg.paths.cache_dir), cfg.seed, device, memo,
                      options={"inception_weights": cfg.inception_weights, "control_kind": getattr(source.cond, "kind", None)},
                      denoise=source.denoise, labels=labels,
                      conditioning=conditioning)
    in_pixels = ctx if source.latent is None else replace(ctx, data=pixels)
    row = {}
    for name in active:
        metric = METRICS[name]
        if name in skipped or (not metric.uses_samples and name in once):
            continue
        advance(0, running=name, setting=f"{sampler_cfg.name} x{steps}")
        if metric.uses_samples:
            samples()  # so that the metric's own time excludes sampling
        t0 = time.perf_counter()
        try:
            result = {**metric.fn(in_pixels if metric.uses_samples else ctx), "better": metric.better, "version": metric.version, "seed": cfg.seed}
        except Skipped as e:
            skipped[name] = str(e)
            advance()
            continue
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        (row if metric.uses_samples else once)[name] = result
        log.info("%s%s: %s (%.1f s)", name, f" ({sampler_cfg.name} x{steps})" if metric.uses_samples else "",
                 ", ".join(f"{m} {v}".strip() for m, v, _, _ in _lines("", result)), time.perf_counter() - t0)
        advance()
    gen = cache.get("gen")
    return {"sampler": gen.sampler if gen else sampler_cfg.name, "steps": steps, "nfe": gen.nfe if gen else None,
            "spacing": sampler_cfg.spacing, "metrics": row, "gen": gen, "x": cache.get("x")}


def _primary(row_metrics: dict) -> str | None:
    """The sample-quality metric a plot shows: fd_ref for images, swd for 2-D data."""
    return next((m for m in ("fd_ref", "swd", "logp_true") if m in row_metrics), None)


def nfe_ticks(nfes: list[int]) -> list[int]:
    """The NFEs to label on a log axis: labels closer than a factor 1.15 would overlap (18 and 20 read "1820"), so of
    such neighbours the rounder is kept (20 over Heun's 19: multiples of 10, then of 5, then the smaller)."""
    ticks = []
    for n in sorted(set(nfes), key=lambda n: (n % 10 != 0, n % 5 != 0, n)):
        if all(max(n, t) / min(n, t) > 1.15 for t in ticks):
            ticks.append(n)
    return sorted(ticks)


def _quality_vs_nfe(rows: list[dict], run_dir: Path, what: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    name = _primary(rows[0]["metrics"])
    if name is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["nfe"], r["metrics"][name]["value"], r["metrics"][name].get("err") or 0) for r in rows if r["sampler"] == sampler)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=sampler)
    m0 = rows[0]["metrics"][name]
    if m0.get("floor") is not None:
        ax.axhline(m0["floor"], color="gray", ls="--", label="real vs real (floor)")
        if m0.get("floor_err"):
            ax.axhspan(m0["floor"] - m0["floor_err"], m0["floor"] + m0["floor_err"], color="gray", alpha=0.15)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xscale("log")  # ticks at the NFEs measured, written as plain numbers
    ax.xaxis.set_major_locator(FixedLocator(nfe_ticks([r["nfe"] for r in rows])))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(NullLocator())
    values = [r["metrics"][name]["value"] for r in rows if r["metrics"][name].get("value") is not None]
    if values and min(values) > 0 and max(values) / min(values) > 5:  # one bad setting would flatten the others on a linear axis
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(name + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"{name} vs NFE: {what}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "quality_vs_nfe.png")
    plt.close(fig)
    lines = [f"| sampler | steps | NFE | {name} | floor |", "|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"][name]
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {_pm(m.get('value'), m.get('err'))} | {_pm(m.get('floor'), m.get('floor_err'))} |")
    (run_dir / "quality_vs_nfe.md").write_text("\n".join(lines) + "\n")


def _pm(value, err=None) -> str:
    """'value ± err' with the value rounded to the error's precision (4 significant digits without one)."""
    if value is None:
        return ""
    if err is None or not math.isfinite(err) or err <= 0 or not math.isfinite(value):
        return f"{value:.4g}"
    digits = max(0, 1 - math.floor(math.log10(abs(err))))  # two significant digits of the error
    return f"{value:.{digits}f} ± {err:.{digits}f}"


def _notes(r: dict) -> str:
    notes = [r["unit"]] if r.get("unit") else []
    if "floor_is" in r:
        notes.append(f"floor: {r['floor_is']}")
    if "chunks" in r:
        notes.append(f"{r['chunks']} chunk{'s' * (r['chunks'] > 1)} of {r['n']}")
    if "classes_present" in r:
        notes.append(f"{r['classes_present']}/{len(r['class_histogram'])} classes, ref acc {r['reference']['test_accuracy']:.3f}")
    if "uniform_bpd" in r:
        notes.append(f"uniform {r['uniform_bpd']:.2f}")
    for key, what in (("subset_std", "subsets"), ("split_std", "splits")):
        if key in r:
            notes.append(f"std over {what} {r[key]:.2g} (floor {r['floor_' + key]:.2g})")
    return "; ".join(notes)


def _lines(name: str, r: dict) -> list[tuple[str, str, str, str]]:
    """(metric, value, floor, notes) rows of one result; one per part when it has several (prdc_ref)."""
    if "errors" not in r:
        return [(name, _pm(r["value"], r.get("err", r.get("stderr"))), _pm(r.get("floor"), r.get("floor_err")), _notes(r))]
    return [(f"{name} {k}" if i == 0 else f"  {k}", _pm(r[k], r["errors"][k]), _pm(r["floor_all"][k], r["floor_errors"][k]), "")
            for i, k in enumerate(r["errors"])]


def _print_table(report: dict, rows: list[dict]) -> None:
    title = f"{report['dataset']}" + (f" @ step {report['checkpoint_step']}" if "checkpoint_step" in report else " (oracle)")
    if report.get("prompts") is not None:
        title += f", prompts={report['prompts']}" + (f" classes={report['classes']}" if report.get("classes") is not None else "")
        title += f", {describe_guidance(report['guidance'])}"
    elif report.get("classes") is not None:
        title += f", classes={report['classes']}, {describe_guidance(report['guidance'])}"
    table = Table(title=f"{title}, {report['num_samples']} samples",
                  caption="value ± one standard error (docs/metrics.md); floor: held-out real images scored the same way, what a "
                          "perfect model scores; better: the direction that improves")
    for col in ("sampler x steps (NFE)", "metric", "value", "floor", "better", "n", "notes"):
        table.add_column(col)
    cells = [("", name, r) for name, r in report["metrics"].items() if name not in rows[0]["metrics"]]
    cells += [(f"{row['sampler']} x{row['steps']} ({row['nfe']})", name, r) for row in rows for name, r in row["metrics"].items()]
    for setting, name, r in cells:
        for i, (metric, value, floor, notes) in enumerate(_lines(name, r)):
            table.add_row(setting if i == 0 else "", metric, value, floor, r.get("better", "") if i == 0 else "", str(r["n"]) if i == 0 else "", notes)
    console = Console(width=None if sys.stdout.isatty() else 120)  # logs and pipes: no wrapping at rich's default 80
    console.print(table)
    for name, reason in report["skipped"].items():
        console.print(f"skipped {name}: {reason}")
