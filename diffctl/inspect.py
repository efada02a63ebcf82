"""``diffctl inspect-schedule``: what a noise schedule does, before a GPU-day is spent on it.

For one schedule, or several overlaid with ``compare=[...]``: a table, curves of beta_t,
alpha_bar_t, log-SNR and sigma_t (``schedule.png``), a forward-process strip of one real image
noised at 8 timesteps, one row per schedule (``forward.png``), and derived facts: terminal SNR,
where SNR crosses 1, and the timesteps ``sampler=... steps=N sampler.spacing=...`` would visit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from .config import load_option
from .core.diffusion import q_sample
from .core.schedules import betas_from_alpha_bar, sampling_sigmas, sigmas_from_alpha_bar, snr
from .data import load_dataset
from .errors import UsageError
from .generation import visited_timesteps
from .io.rundir import write_json
from .runtime import schedule_alpha_bar

log = logging.getLogger("diffctl.inspect")
STRIP_FRACTIONS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # of T, for the forward-process strip


def schedule_curves(alpha_bar: torch.Tensor) -> dict[str, torch.Tensor]:
    """beta_t, alpha_bar_t, SNR_t and sigma_t, each float64 ``[T]``."""
    return {"beta": betas_from_alpha_bar(alpha_bar), "alpha_bar": alpha_bar, "snr": snr(alpha_bar), "sigma": sigmas_from_alpha_bar(alpha_bar)}


def schedule_option(name: str, like: DictConfig) -> DictConfig:
    """The shipped config of schedule option ``name``, with T and zero_terminal_snr of ``like``."""
    try:
        cfg = load_option("schedule", name)
    except ValueError as e:
        raise UsageError(f"compare: {e}") from None
    cfg.timesteps, cfg.zero_terminal_snr = like.timesteps, like.zero_terminal_snr
    return cfg


def facts(alpha_bar: torch.Tensor) -> dict:
    s = snr(alpha_bar)
    below = (s < 1).nonzero()
    sig = sigmas_from_alpha_bar(alpha_bar)
    return {"terminal_snr": float(s[-1]), "snr_crosses_1_at_t": int(below[0]) if len(below) else None,
            "sigma_min": float(sig[0]), "sigma_max": float(sig[-1])}


def plot_curves(all_curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), dpi=100)
    panels = [("beta", "beta_t", "log"), ("alpha_bar", "alpha_bar_t", "linear"), ("log_snr", "log SNR_t", "linear"), ("sigma", "sigma_t", "log")]
    for name, curves in all_curves.items():
        t = torch.arange(len(curves["beta"])).numpy()
        for ax, (key, label, yscale) in zip(axes, panels):
            y = torch.log(curves["snr"]) if key == "log_snr" else curves[key]
            ax.plot(t, y.numpy(), label=name)
            ax.set_yscale(yscale)
            ax.set_title(label)
            ax.set_xlabel("t")
            ax.grid(alpha=0.3)
    axes[2].axhline(0, color="gray", lw=0.8, ls="--")  # SNR = 1
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def forward_strip(x0: torch.Tensor, alpha_bars: dict[str, torch.Tensor], path: Path, seed: int = 0) -> list[int]:
    """One labelled row per schedule: ``x0`` ``[C, H, W]`` noised at the same timesteps with the same noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(next(iter(alpha_bars.values())))
    ts = [min(T - 1, round(f * (T - 1))) for f in STRIP_FRACTIONS]
    noise = torch.randn((len(ts), *x0.shape), generator=torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(len(alpha_bars), len(ts), figsize=(1.3 * len(ts) + 1, 1.4 * len(alpha_bars) + 0.3), squeeze=False, dpi=100)
    for row, (name, ab) in zip(axes, alpha_bars.items()):
        x_t = q_sample(x0.expand(len(ts), *x0.shape), ab[ts].float(), noise)  # DDPM eq. 4, same eps per column
        for ax, t, img in zip(row, ts, x_t):
            ax.imshow(((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={t}\nSNR {snr(ab)[t].item():.2g}", fontsize=7)
        row[0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return ts


def run_inspect(cfg: DictConfig, run_dir: Path) -> dict:
    names = list(dict.fromkeys(cfg.compare)) or [cfg.schedule.name]  # compare=[...] sets the order of the rows
    if cfg.schedule.name not in names:
        names.insert(0, cfg.schedule.name)
    schedules = {n: cfg.schedule if n == cfg.schedule.name else schedule_option(n, cfg.schedule) for n in names}
    alpha_bars = {name: schedule_alpha_bar(s) for name, s in schedules.items()}
    all_curves = {name: schedule_curves(ab) for name, ab in alpha_bars.items()}
    console = Console()
    report = {"schedules": {}}
    for name, curves in all_curves.items():
        T = len(curves["beta"])
        table = Table(title=f"schedule {name} (T = {T})")
        for col in ("t", "beta_t", "alpha_bar_t", "SNR", "log SNR", "sigma"):
            table.add_column(col, justify="right")
        rows = []
        for i in torch.linspace(0, T - 1, max(2, cfg.rows)).round().long().unique().tolist():
            r = {"t": i, **{k: float(v[i]) for k, v in curves.items()}}
            rows.append(r)
            table.add_row(str(r["t"]), f"{r['beta']:.4g}", f"{r['alpha_bar']:.4g}", f"{r['snr']:.4g}", f"{torch.log(curves['snr'][i]).item():.3f}", f"{r['sigma']:.4g}")
        console.print(table)
        f = facts(alpha_bars[name])
        sigmas = sampling_sigmas(cfg.sampler.spacing, alpha_bars[name], cfg.steps, cfg.sampler.rho)
        f["visits"] = visited_timesteps(sigmas, alpha_bars[name])
        console.print(f"{name}: terminal SNR {f['terminal_snr']:.3g}; SNR < 1 from t = {f['snr_crosses_1_at_t']}; "
                      f"sigma from {f['sigma_min']:.3g} to {f['sigma_max']:.3g}")
        console.print(f"{name}: {cfg.sampler.name} with steps={cfg.steps} spacing={cfg.sampler.spacing} visits t = {f['visits']}")
        report["schedules"][name] = {"timesteps": T, "rows": rows, **f}
    plot_curves(all_curves, run_dir / "schedule.png")
    data = load_dataset(cfg.dataset)
    if data.is_image:
        if not 0 <= cfg.image_index < len(data.test):
            raise UsageError(f"image_index={cfg.image_index} is outside the test split (0..{len(data.test) - 1})")
        report["strip_timesteps"] = forward_strip(data.test[cfg.image_index], alpha_bars, run_dir / "forward.png")
    elif data.shape == (1,):  # 1-D data: the exact density of x_t over t, one row per schedule
        from .io.plots1d import density_of, save_forward

        mixture, label = density_of(data)
        save_forward(mixture, alpha_bars, run_dir / "forward.png", label=label)
    write_json(run_dir / "schedule.json", report)
    log.info("wrote %s%s", run_dir / "schedule.png", f" and {run_dir / 'forward.png'}" if (run_dir / "forward.png").exists() else "")
    return report
