"""Generation: turn a trained network into samples, and the ``diffctl sample`` command."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .core.samplers import get_sampler
from .core.schedules import sampling_sigmas, sigma_to_t
from .io.images import save_samples
from .io.rundir import write_json
from .progress import progress_bar
from .runtime import Source, load_source, resolve_device

log = logging.getLogger("diffctl.sample")


class PerImageNoise:
    """Standard normal noise where image i always draws from its own generator seeded ``seed + i``.

    So image i is the same whatever the batch size or the batch it lands in.
    """

    def __init__(self, seed: int, start: int, count: int, shape: tuple, device: torch.device):
        self.gens = [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]
        self.shape, self.device = tuple(shape), device

    def __call__(self, step: int = -1) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64) for g in self.gens])
        return z.to(self.device)


def sampler_options(sampler_cfg: DictConfig) -> dict:
    """The sampler function's keyword options (eta, ...) from its config group."""
    return {k: v for k, v in OmegaConf.to_container(sampler_cfg).items() if k not in ("name", "spacing", "rho", "clip")}


def visited_timesteps(sigmas: torch.Tensor, alpha_bar: torch.Tensor) -> list:
    """The training timesteps (fractional for karras spacing) of the nonzero noise levels."""
    t = sigma_to_t(sigmas[:-1].cpu(), alpha_bar).tolist()
    return [int(round(v)) if abs(v - round(v)) < 1e-6 else round(v, 3) for v in t]


class CountingDenoiser:
    """Wraps D(x, sigma): counts calls (NFE per batch) and optionally clamps x0_hat to [-1, 1]."""

    def __init__(self, denoise: Callable, clip: bool = False):
        self.denoise, self.clip, self.calls = denoise, clip, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x0 = self.denoise(x, sigma)
        return x0.clamp(-1, 1) if self.clip else x0


@torch.no_grad()
def generate(
    denoise: Callable,
    alpha_bar: torch.Tensor,
    sampler_cfg: DictConfig,
    steps: int,
    num_samples: int,
    shape: tuple,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    bounded: bool = False,
    on_step: Optional[Callable[[], None]] = None,
) -> tuple[torch.Tensor, dict]:
    """Sample ``num_samples`` items of ``shape`` with the denoiser D(x, sigma) on a schedule.

    ``bounded``: the data lies in [-1, 1] (pixel data), so ``sampler.clip=null`` clamps x0_hat.
    Returns (samples float32 [N, ...] on CPU, info with sampler, steps, visited timesteps and NFE
    per image).  Image i depends only on ``seed + i``, not on the batch size.
    """
    sampler = get_sampler(sampler_cfg.name)
    sigmas = sampling_sigmas(sampler_cfg.spacing, alpha_bar, steps, sampler_cfg.rho).to(device)
    if sampler_cfg.name == "heun" and len(sigmas) > 2 and sigmas[1] > 0 and sigmas[0] / sigmas[1] > 50:
        log.warning("heun's first step goes from sigma %.3g to %.3g: its trapezoidal correction over so long a step amplifies "
                    "any error (see docs/samplers.md); prefer sampler.spacing=karras with a schedule of moderate sigma_max, "
                    "or dpmpp_2m / unipc", sigmas[0].item(), sigmas[1].item())
    clip = bounded if sampler_cfg.clip is None else sampler_cfg.clip
    counted = CountingDenoiser(denoise, clip)
    callback = (lambda *a: on_step()) if on_step else None
    out = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        noise = PerImageNoise(seed, start, count, shape, device)
        x = noise() * sigmas[0]  # x_T = sigma_max z in the scaled variable x = x_t / sqrt(alpha_bar_t)
        out.append(sampler(counted, x, sigmas, noise=noise, callback=callback, **sampler_options(sampler_cfg)).float().cpu())
    batches = (num_samples + batch_size - 1) // batch_size
    info = {"sampler": sampler_cfg.name, "steps": steps, "spacing": sampler_cfg.spacing, "clip": clip, "nfe": counted.calls // max(batches, 1),
            "timesteps": visited_timesteps(sigmas, alpha_bar)}
    return torch.cat(out), info


def sample_with_progress(source: Source, cfg: DictConfig, device: torch.device, steps: int, sampler_cfg: DictConfig | None = None):
    """``generate`` from a sample/eval config, with a progress bar; returns (samples, info, seconds)."""
    sampler_cfg = sampler_cfg if sampler_cfg is not None else cfg.sampler
    t0 = time.perf_counter()
    total = steps * ((cfg.num_samples + cfg.batch_size - 1) // cfg.batch_size)
    with progress_bar(f"sampling {sampler_cfg.name} x{steps}", total) as advance:
        samples, info = generate(source.denoise, source.alpha_bar, sampler_cfg, steps, cfg.num_samples, source.data.shape,
                                 seed=cfg.seed, batch_size=cfg.batch_size, device=device, bounded=source.data.levels is not None, on_step=advance)
    return samples, info, time.perf_counter() - t0


def run_sample(cfg: DictConfig, run_dir: Path) -> dict:
    """``diffctl sample``: load the checkpoint (or oracle), generate, write grid.png, samples.npz, sample.json."""
    device = resolve_device(cfg.device)
    source = load_source(cfg, device)
    log.info("sampling from %s", source.describe())
    samples, info, seconds = sample_with_progress(source, cfg, device, cfg.steps)
    data = source.data
    log.info("visited timesteps: %s", info["timesteps"])
    files = save_samples(samples, run_dir, reference=data.test if not data.is_image else None, title=f"{cfg.sampler.name}, {cfg.steps} steps")
    record = {**info, "num_samples": cfg.num_samples, "seed": cfg.seed, "seconds": round(seconds, 3), **source.info, **files}
    write_json(run_dir / "sample.json", record)
    log.info("%d samples in %.1fs (%s, %d steps, NFE %d)", cfg.num_samples, seconds, cfg.sampler.name, cfg.steps, info["nfe"])
    return record
