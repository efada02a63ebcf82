"""Generation: turn a trained network into samples, and the ``diffctl sample`` command."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .core.diffusion import Denoiser
from .core.samplers import get_sampler
from .core.schedules import sampling_sigmas, sigma_to_t
from .io.images import save_samples
from .io.rundir import resolve_checkpoint, write_json
from .progress import progress_bar
from .runtime import load_trained, resolve_device

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


@torch.no_grad()
def generate(
    net: torch.nn.Module,
    alpha_bar: torch.Tensor,
    prediction: str,
    sampler_cfg: DictConfig,
    steps: int,
    num_samples: int,
    shape: tuple,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    on_step: Optional[Callable[[], None]] = None,
) -> tuple[torch.Tensor, dict]:
    """Sample ``num_samples`` items of ``shape``; returns (samples float32 [N, ...] on CPU, info).

    info holds the sampler, steps, visited timesteps and NFE (network evaluations per image).
    """
    sampler = get_sampler(sampler_cfg.name)
    sigmas = sampling_sigmas(sampler_cfg.spacing, alpha_bar, steps, sampler_cfg.rho).to(device)
    denoise = Denoiser(net, alpha_bar.to(device), prediction, clip=sampler_cfg.clip)
    callback = (lambda *a: on_step()) if on_step else None
    out = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        noise = PerImageNoise(seed, start, count, shape, device)
        x = noise() * sigmas[0]  # x_T = sigma_max z in the scaled variable x = x_t / sqrt(alpha_bar_t)
        out.append(sampler(denoise, x, sigmas, noise=noise, callback=callback, **sampler_options(sampler_cfg)).float().cpu())
    batches = (num_samples + batch_size - 1) // batch_size
    info = {"sampler": sampler_cfg.name, "steps": steps, "spacing": sampler_cfg.spacing, "nfe": denoise.nfe // max(batches, 1), "timesteps": visited_timesteps(sigmas, alpha_bar)}
    return torch.cat(out), info


def run_sample(cfg: DictConfig, run_dir: Path) -> dict:
    """``diffctl sample``: load the checkpoint, generate, write grid.png, samples.npz, sample.json."""
    device = resolve_device(cfg.device)
    ckpt = resolve_checkpoint(cfg.ckpt, Path(cfg.paths.output_root))
    trained = load_trained(ckpt, device, ema=cfg.ema)
    from .data import load_dataset

    data = load_dataset(trained.cfg.dataset)
    log.info("checkpoint %s (step %d, %s weights)", ckpt, trained.step, "EMA" if cfg.ema else "raw")
    t0 = time.perf_counter()
    total = cfg.steps * ((cfg.num_samples + cfg.batch_size - 1) // cfg.batch_size)
    with progress_bar(f"sampling {cfg.sampler.name}", total) as advance:
        samples, info = generate(
            trained.net, trained.alpha_bar, trained.cfg.model.prediction, cfg.sampler, cfg.steps, cfg.num_samples,
            data.shape, seed=cfg.seed, batch_size=cfg.batch_size, device=device, on_step=advance,
        )
    seconds = time.perf_counter() - t0
    log.info("visited timesteps: %s", info["timesteps"])
    files = save_samples(samples, run_dir, reference=data.test if not data.is_image else None, title=f"{cfg.sampler.name}, {cfg.steps} steps")
    record = {**info, "num_samples": cfg.num_samples, "seed": cfg.seed, "seconds": round(seconds, 3), "checkpoint": str(ckpt), "checkpoint_step": trained.step, "ema": cfg.ema, **files}
    write_json(run_dir / "sample.json", record)
    log.info("%d samples in %.1fs (%s, %d steps, NFE %d)", cfg.num_samples, seconds, cfg.sampler.name, cfg.steps, info["nfe"])
    return record
