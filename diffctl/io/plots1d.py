"""Pictures of 1-D data (dataset=gmm1d), drawn with matplotlib (Agg).

* the forward process as a heat map: the exact density of x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
  over the timestep t (data at the left, N(0, 1) at the right), between the data density p_0 (left panel) and
  p_T against N(0, 1) (right panel): ``save_forward`` (``diffctl inspect-schedule``);
* the same with a sampler's reverse trajectories drawn over it and the samples' histogram beside the true density:
  ``save_trajectories`` (``diffctl sample``);
* a histogram of samples against data: ``save_histogram`` (the 1-D counterpart of a 2-D scatter plot).

The heat map is drawn in the variance-preserving x_t, whose range stays that of the data; the samplers work in
x = x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps, which spreads to +-3 sigma_max, so their states are mapped to x_t
(x_t = x / sqrt(1 + sigma^2)).  For a Gaussian mixture p_t is again a Gaussian mixture
(``GaussianMixture.noised``): computed in closed form, not from samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..core.gmm import GaussianMixture
from ..core.schedules import sigma_to_t, sigmas_from_alpha_bar

X_LABEL = "$x_t=\\sqrt{\\bar\\alpha_t}\\,x_0+\\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon$\n(sampler's $x = x_t/\\sqrt{\\bar\\alpha_t}$)"
MAX_COLUMNS = 500  # heat-map columns (timesteps) drawn at most


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def density_of(data) -> tuple[GaussianMixture, str]:
    """The closed-form density of 1-D ``data``: its oracle mixture, or else a Gaussian KDE of its test split
    (Scott's bandwidth), which is a Gaussian mixture too; and how to name it in a legend."""
    if isinstance(data.oracle, GaussianMixture):
        return data.oracle, "true density"
    x = data.test[:2000].double().flatten(1)
    h = 1.06 * float(x.std()) * len(x) ** -0.2
    return GaussianMixture(x, h), "data density (KDE of the test split)"


def x_range(mixture: GaussianMixture) -> tuple[float, float]:
    """The x_t interval drawn: the components' means +- 4 stds, and +- 3.5 (N(0, 1))."""
    mu, s = mixture.means.flatten(), mixture.stds
    return min(float((mu - 4 * s).min()), -3.5), max(float((mu + 4 * s).max()), 3.5)


def forward_density(mixture: GaussianMixture, alpha_bar: torch.Tensor, xs: torch.Tensor,
                    columns: int = MAX_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps ``[C]``, density ``[M, C]``): p_t(x_t) of the 1-D ``mixture`` at the points ``xs`` ``[M]`` for at most
    ``columns`` timesteps spread evenly over 0..T-1, exact (DDPM eq. 4 applied to each component)."""
    ts = torch.linspace(0, len(alpha_bar) - 1, min(columns, len(alpha_bar))).round().long().unique()
    dens = torch.stack([mixture.noised(alpha_bar[t]).log_density(xs.double()[:, None]).exp() for t in ts], dim=1)
    return ts.numpy(), dens.numpy()


def _normal(xs: np.ndarray) -> np.ndarray:
    return np.exp(-xs**2 / 2) / math.sqrt(2 * math.pi)


def _draw_map(ax, mixture, alpha_bar, xs, vmax=None):
    """The heat map of p_t(x_t) on ``ax`` with sigma_t on a top axis and the SNR = 1 timestep dashed; returns the image."""
    ts, dens = forward_density(mixture, alpha_bar, xs)
    T = len(alpha_bar)
    half = 0.5 * (ts[1] - ts[0]) if len(ts) > 1 else 0.5
    im = ax.imshow(dens, origin="lower", aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=vmax or dens.max(),
                   extent=(ts[0] - half, ts[-1] + half, float(xs[0]), float(xs[-1])))
    ax.set_xlabel(f"timestep t (T = {T}): data at left, noise at right")
    sig = sigmas_from_alpha_bar(alpha_bar)
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    levels, ticks = [], []
    for s in (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0):
        at = float(sigma_to_t(torch.tensor(s, dtype=torch.float64), alpha_bar))
        if sig[0] <= s <= sig[-1] and (not ticks or at - ticks[-1] > 0.05 * T):  # labels apart where sigma_t climbs steeply
            levels, ticks = levels + [f"{s:g}"], ticks + [at]
    top.set_xticks(ticks, levels)
    top.set_xlabel("noise level $\\sigma_t=\\sqrt{(1-\\bar\\alpha_t)/\\bar\\alpha_t}$")
    if sig[0] <= 1 <= sig[-1]:
        ax.axvline(float(sigma_to_t(torch.tensor(1.0, dtype=torch.float64), alpha_bar)), color="white", ls="--", lw=0.8, alpha=0.7)
    return im


def _figure(rows: int):
    """A figure of ``rows`` rows of [p_0 panel | heat map | p_T panel | colour bar], the panels sharing the x_t axis."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig = plt.figure(figsize=(13, 4.6 * rows), dpi=100)
    grid = fig.add_gridspec(rows, 4, width_ratios=[1.1, 4.5, 1.1, 0.12], wspace=0.08, hspace=0.8)
    axes = []
    for r in range(rows):
        heat = fig.add_subplot(grid[r, 1])
        left, right = fig.add_subplot(grid[r, 0], sharey=heat), fig.add_subplot(grid[r, 2], sharey=heat)
        heat.tick_params(labelleft=False)
        right.tick_params(labelleft=False)
        for ax in (left, right):  # no 0 tick by the map's edge, where it would run into the map's own
            ax.xaxis.set_major_locator(MaxNLocator(3, prune="lower"))
        axes.append((left, heat, right, fig.add_subplot(grid[r, 3])))
    return plt, fig, axes


def _data_panel(ax, mixture, xs, label, samples=None):
    """p_0 drawn sideways (density to the left, touching the map's t = 0 edge), with the samples' histogram."""
    p0 = mixture.log_density(xs.double()[:, None]).exp().numpy()
    if samples is not None:
        ax.hist(samples.flatten().numpy(), bins=min(150, max(10, int(2 * len(samples) ** 0.5))), range=(float(xs[0]), float(xs[-1])),
                density=True, orientation="horizontal", color="tab:blue", alpha=0.45, label=f"samples (n = {len(samples)})")
    ax.plot(p0, xs.numpy(), color="black", lw=1.4, label=label)
    ax.set_xlim(1.15 * max(p0.max(), ax.get_xlim()[1]), 0)
    ax.set_xlabel("density")
    ax.set_ylabel(X_LABEL)
    ax.set_title("t = 0: data", fontsize=10)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.85)


def _prior_panel(ax, mixture, alpha_bar, xs):
    """p_T (the forward process's end) against N(0, 1), where samplers start."""
    pT = mixture.noised(alpha_bar[-1]).log_density(xs.double()[:, None]).exp().numpy()
    ax.plot(pT, xs.numpy(), color="black", lw=1.4, label=f"$p_T$ (SNR {float(alpha_bar[-1] / (1 - alpha_bar[-1])):.2g})")
    ax.plot(_normal(xs.numpy()), xs.numpy(), color="tab:orange", ls="--", lw=1.2, label="N(0, 1)")
    ax.set_xlim(0, 1.15 * max(pT.max(), 0.4))
    ax.set_xlabel("density")
    ax.set_title("t = T: noise", fontsize=10)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.85)


def save_forward(mixture: GaussianMixture, alpha_bars: dict[str, torch.Tensor], path: Path, label: str = "true density") -> Path:
    """One row per schedule: p_0 | the heat map of p_t(x_t) over t | p_T vs N(0, 1) (same colour scale in every row)."""
    xs = torch.linspace(*x_range(mixture), 400, dtype=torch.float64)
    plt, fig, axes = _figure(len(alpha_bars))
    vmax = max(float(forward_density(mixture, ab, xs, columns=2)[1].max()) for ab in alpha_bars.values())  # t = 0 is the peak
    for (left, heat, right, bar), (name, ab) in zip(axes, alpha_bars.items()):
        im = _draw_map(heat, mixture, ab, xs, vmax=vmax)
        heat.set_title(f"schedule {name}: exact density $p_t(x_t)$ of the forward process", fontsize=10, pad=28)
        _data_panel(left, mixture, xs, label)
        _prior_panel(right, mixture, ab, xs)
        fig.colorbar(im, cax=bar, label="$p_t(x_t)$")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_trajectories(mixture: GaussianMixture, alpha_bar: torch.Tensor, sigmas: torch.Tensor, states: torch.Tensor,
                      samples: torch.Tensor, path: Path, label: str = "true density", title: str = "") -> Path:
    """The heat map of the forward density with reverse trajectories over it (``states`` ``[S + 1, K, 1]`` at noise levels
    ``sigmas`` ``[S + 1]``, in the samplers' scaled x), the samples' histogram beside p_0, and p_T vs N(0, 1)."""
    lo, hi = x_range(mixture)
    xs = torch.linspace(lo, hi, 400, dtype=torch.float64)
    plt, fig, ((left, heat, right, bar),) = _figure(1)
    im = _draw_map(heat, mixture, alpha_bar, xs)
    t = sigma_to_t(sigmas.double(), alpha_bar).numpy()  # sigma = 0 (the end) lands on t = 0
    x_t = (states.flatten(1).double() / (1 + sigmas.double()[:, None] ** 2).sqrt()).numpy()  # x_t = sqrt(alpha_bar) x
    for k in range(x_t.shape[1]):
        heat.plot(t, x_t[:, k], color="cyan", lw=1.1, marker="o", ms=2.2, alpha=0.9,
                  label=f"reverse trajectories ({len(sigmas) - 1} steps, dots)" if k == 0 else None)
    heat.set_ylim(lo, hi)
    heat.legend(loc="lower right", fontsize=8, framealpha=0.85)
    heat.set_title(title, fontsize=10, pad=28)
    _data_panel(left, mixture, xs, label, samples=samples)
    _prior_panel(right, mixture, alpha_bar, xs)
    fig.colorbar(im, cax=bar, label="$p_t(x_t)$")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_histogram(points: torch.Tensor, path: Path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Histogram of 1-D points ``[N, 1]`` (reference data drawn in grey behind)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    values = points.flatten().float().cpu().numpy()
    values = np.where(np.isfinite(values), values, np.nan)  # a diverged model's inf / NaN samples: left out of the bars
    both = np.concatenate([values, reference.flatten().cpu().numpy()]) if reference is not None else values
    both = both[np.isfinite(both)]
    edges = np.histogram_bin_edges(both if len(both) else np.zeros(1), bins=min(80, max(10, int(len(values) ** 0.5))))
    if reference is not None:
        ax.hist(reference.flatten().cpu().numpy(), bins=edges, density=True, color="lightgray", label=f"data (n = {len(reference)})")
    ax.hist(values, bins=edges, density=True, histtype="step", lw=1.5, color="tab:blue", label=f"samples (n = {len(values)})")
    ax.set_ylim(0, 1.25 * ax.get_ylim()[1])  # room for the legend above the modes
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
