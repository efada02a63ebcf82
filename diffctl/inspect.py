"""``diffctl inspect-schedule``: a schedule's numbers as a table and its curves as a PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from .core.schedules import betas_from_alpha_bar, sigmas_from_alpha_bar, snr
from .io.rundir import write_json
from .runtime import schedule_alpha_bar

log = logging.getLogger("diffctl.inspect")


def schedule_curves(alpha_bar: torch.Tensor) -> dict[str, torch.Tensor]:
    """beta_t, alpha_bar_t, SNR_t and sigma_t, each float64 ``[T]``."""
    return {"beta": betas_from_alpha_bar(alpha_bar), "alpha_bar": alpha_bar, "snr": snr(alpha_bar), "sigma": sigmas_from_alpha_bar(alpha_bar)}


def plot_curves(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.arange(1, len(curves["beta"]) + 1).numpy()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=100)
    panels = [("beta", "beta_t", "linear"), ("alpha_bar", "alpha_bar_t", "linear"), ("snr", "log SNR_t", "log"), ("sigma", "sigma_t", "log")]
    for ax, (key, label, yscale) in zip(axes, panels):
        y = curves[key].numpy()
        if key == "snr":
            y, yscale = torch.log(curves[key]).numpy(), "linear"
        ax.plot(t, y)
        ax.set_yscale(yscale)
        ax.set_title(label)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_inspect(cfg: DictConfig, run_dir: Path) -> dict:
    alpha_bar = schedule_alpha_bar(cfg.schedule)
    curves = schedule_curves(alpha_bar)
    T = len(alpha_bar)
    rows = torch.linspace(0, T - 1, max(2, cfg.rows)).round().long().unique()
    table = Table(title=f"schedule {cfg.schedule.name} (T = {T})")
    for col in ("t", "beta_t", "alpha_bar_t", "SNR", "log SNR", "sigma"):
        table.add_column(col, justify="right")
    records = []
    for i in rows.tolist():
        r = {"t": i + 1, **{k: float(v[i]) for k, v in curves.items()}}
        records.append(r)
        table.add_row(str(r["t"]), f"{r['beta']:.4g}", f"{r['alpha_bar']:.4g}", f"{r['snr']:.4g}", f"{torch.log(curves['snr'][i]).item():.3f}", f"{r['sigma']:.4g}")
    Console().print(table)
    crossing = int((curves["snr"] < 1).nonzero()[0]) + 1 if (curves["snr"] < 1).any() else None
    facts = {"terminal_snr": float(curves["snr"][-1]), "sigma_max": float(curves["sigma"][-1]), "sigma_min": float(curves["sigma"][0]),
             "snr_crosses_1_at_t": crossing}
    Console().print(f"terminal SNR {facts['terminal_snr']:.3g}; sigma from {facts['sigma_min']:.3g} to {facts['sigma_max']:.3g}; SNR < 1 from t = {crossing}")
    plot_curves(curves, run_dir / "schedule.png", f"{cfg.schedule.name} (T = {T})")
    write_json(run_dir / "schedule.json", {"schedule": cfg.schedule.name, "timesteps": T, "rows": records, **facts})
    log.info("wrote %s", run_dir / "schedule.png")
    return facts
