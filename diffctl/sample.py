"""Generation: turn a trained network into samples, and the ``diffctl sample`` command."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .core.guidance import classifier_free, classifier_guided, inpainting, repaint
from .core.samplers import get_sampler
from .core.schedules import sampling_sigmas, sigma_to_t
from .errors import UsageError
from .io.images import save_inpaint_grid, save_samples
from .io.rundir import write_json
from .progress import progress_bar
from .runtime import Source, load_classifier, load_source, resolve_device

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


def class_labels(count: int, classes) -> torch.Tensor:
    """The requested class of image i: ``classes`` cycled (so image i's class does not depend on batching)."""
    classes = list(classes)
    return torch.tensor([classes[i % len(classes)] for i in range(count)], dtype=torch.long)


@dataclass
class Conditioning:
    """What steers generation: class labels per image with classifier-free and/or classifier guidance, and/or inpainting."""

    labels: Optional[torch.Tensor] = None  # [num_samples] requested classes (None: unconditional)
    null: int = 0  # the model's null label (= its num_classes; 0: an unconditional model, no classifier-free guidance)
    scale: float = 1.0  # guidance.scale w: 1 = conditional, 0 = unconditional
    rescale: float = 0.0  # guidance.rescale phi
    known: Optional[torch.Tensor] = None  # [C, H, W] clean image whose masked pixels are kept
    mask: Optional[torch.Tensor] = None  # [C, H, W], 1 = known
    resample: int = 1  # RePaint resampling
    classifier: Optional[Callable] = None  # log p(y | x, sigma) [N, K] of a noise-aware classifier: classifier guidance
    classifier_scale: float = 1.0
    classifier_info: dict = field(default_factory=dict)  # which classifier (checkpoint and step), for the records

    def denoiser(self, denoise: Callable, start: int, count: int, noise: "PerImageNoise") -> Callable:
        d = denoise
        if self.labels is not None and self.null:
            d = classifier_free(denoise, self.labels[start:start + count], self.null, self.scale, self.rescale)
        if self.classifier is not None:
            d = classifier_guided(d, self.classifier, self.labels[start:start + count], self.classifier_scale)
        if self.known is not None:
            d = inpainting(d, self.known.expand(count, *self.known.shape), self.mask.expand(count, *self.mask.shape), noise())
        return d

    @property
    def passes(self) -> int:
        """Network passes per denoiser call."""
        return 2 if self.labels is not None and self.null and self.scale not in (0.0, 1.0) else 1

    @property
    def classifier_passes(self) -> int:
        """Classifier gradients (forward + backward) per denoiser call."""
        return int(self.classifier is not None and self.classifier_scale != 0.0)


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
    cond: Optional[Conditioning] = None,
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
                    "any error, and trained models then give noise, not images (see docs/samplers.md); use sampler.spacing=karras with a schedule of moderate sigma_max, "
                    "or dpmpp_2m / unipc", sigmas[0].item(), sigmas[1].item())
    clip = bounded if sampler_cfg.clip is None else sampler_cfg.clip
    callback = (lambda *a: on_step()) if on_step else None
    out, calls = [], 0  # calls: denoiser calls per image (every batch makes the same number)
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        noise = PerImageNoise(seed, start, count, shape, device)
        x = noise() * sigmas[0]  # x_T = sigma_max z in the scaled variable x = x_t / sqrt(alpha_bar_t)
        counted = CountingDenoiser(cond.denoiser(denoise, start, count, noise) if cond else denoise, clip)
        if cond is not None and cond.resample > 1:
            x = repaint(counted, x, sigmas, resample=cond.resample, noise=noise, callback=callback)
        else:
            x = sampler(counted, x, sigmas, noise=noise, callback=callback, **sampler_options(sampler_cfg))
        out.append(x.float().cpu())
        calls = counted.calls
    info = {"sampler": sampler_cfg.name if not (cond and cond.resample > 1) else f"repaint (ddpm, resample {cond.resample})",
            "steps": steps, "spacing": sampler_cfg.spacing, "clip": clip, "nfe": calls * (cond.passes if cond else 1),
            "classifier_nfe": calls * (cond.classifier_passes if cond else 0),
            "timesteps": visited_timesteps(sigmas, alpha_bar)}
    return torch.cat(out), info


MASKS = ("left", "right", "top", "bottom", "center")


def _region_mask(name: str, shape: tuple) -> torch.Tensor:
    """1 where the named region is to be regenerated, over ``[C, H, W]``."""
    c, h, w = shape
    m = torch.zeros(shape)
    region = {"left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
              "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None)),
              "center": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))}[name]
    m[:, region[0], region[1]] = 1
    return m


def _png(path: str, shape: tuple, what: str) -> torch.Tensor:
    """A PNG as ``[C, H, W]`` in [-1, 1], checked against the data's shape."""
    from .data.vision import open_image

    img = open_image(path, what)
    c, h, w = shape
    if img.size != (w, h):
        raise UsageError(f"{what}={path} is {img.size[0]}x{img.size[1]}; this model's images are {w}x{h}")
    arr = torch.from_numpy(np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32)).reshape(h, w, c)
    return arr.permute(2, 0, 1) / 127.5 - 1


def conditioning(cfg: DictConfig, source: Source, device: torch.device = torch.device("cpu")) -> Optional[Conditioning]:
    """Labels (``classes``, ``guidance``) and inpainting (``inpaint``) from a sample/eval config, checked."""
    data, n = source.data, cfg.num_samples
    classes, g = cfg.get("classes"), cfg.guidance
    labels = classifier = None
    if classes is None:
        if g.scale != 1.0 or g.rescale or g.classifier is not None:
            raise UsageError("guidance.* steers towards classes: add classes=all or classes=[3,7]")
    else:
        if g.classifier is not None:
            classifier = load_classifier(str(g.classifier), cfg, source, device)
            if source.num_classes and source.num_classes != classifier.num_classes:
                raise UsageError(f"guidance.classifier has {classifier.num_classes} classes, the model {source.num_classes}")
        elif source.num_classes == 0:
            raise UsageError("classes= needs a class-conditional model (model.num_classes=N) or a classifier "
                             "(guidance.classifier=<a 'diffctl train task=classifier' run>); this model is unconditional")
        if source.num_classes == 0 and (g.scale != 1.0 or g.rescale):
            raise UsageError("guidance.scale and guidance.rescale are classifier-free guidance, for a class-conditional model; "
                             "steer this unconditional one with guidance.classifier_scale")
        num_classes = source.num_classes or classifier.num_classes
        if classes == "all":
            classes = list(range(num_classes))
        elif OmegaConf.is_list(classes):
            classes = list(classes)
        else:
            classes = [classes]
        bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < num_classes]
        if bad or not classes:
            raise UsageError(f"classes={classes}: must be 'all' or class indices in [0, {num_classes - 1}]")
        labels = class_labels(n, classes)
        if g.rescale and g.scale == 1.0:
            log.warning("guidance.rescale=%s does nothing at guidance.scale=1 (the conditional model itself)", g.rescale)
    inp = cfg.get("inpaint")
    known = mask = None
    if inp is not None and (inp.image is not None or inp.mask is not None):
        if inp.image is None or inp.mask is None:
            raise UsageError("inpainting needs both inpaint.image=<test index | PNG> and inpaint.mask=<region | PNG>")
        if not data.is_image:
            raise UsageError("inpainting needs image data")
        if isinstance(inp.image, int):
            if not 0 <= inp.image < len(data.test):
                raise UsageError(f"inpaint.image={inp.image}: the test split has images 0..{len(data.test) - 1}")
            known = data.test[inp.image]
        else:
            known = _png(str(inp.image), data.shape, "inpaint.image")
        if inp.mask in MASKS:
            hole = _region_mask(inp.mask, data.shape)
        elif str(inp.mask).lower().endswith(".png"):
            hole = (_png(str(inp.mask), data.shape, "inpaint.mask") > 0).float()
        else:
            raise UsageError(f"inpaint.mask={inp.mask}: choose {', '.join(MASKS)} or a PNG file (white = regenerate)")
        mask = 1 - hole  # 1 = known
        if inp.resample > 1 and cfg.sampler.name != "ddpm":
            log.warning("inpaint.resample=%d: RePaint takes DDPM steps; sampler=%s is not used", inp.resample, cfg.sampler.name)
        log.info("inpainting %s: regenerating %d of %d pixels", inp.image, int(hole.sum()), hole.numel())
    elif inp is not None and inp.resample > 1:
        raise UsageError("inpaint.resample needs inpaint.image and inpaint.mask")
    if labels is None and known is None:
        return None
    return Conditioning(labels, source.num_classes, g.scale, g.rescale, known, mask, inp.resample if inp is not None else 1,
                        classifier.log_prob if classifier else None, g.classifier_scale, classifier.info if classifier else {})


def sample_with_progress(source: Source, cfg: DictConfig, device: torch.device, steps: int, sampler_cfg: DictConfig | None = None):
    """``generate`` from a sample/eval config, with a progress bar; returns (samples, info, seconds).

    ``info["labels"]`` lists the requested class of each sample for a class-conditional model.
    """
    sampler_cfg = sampler_cfg if sampler_cfg is not None else cfg.sampler
    cond = conditioning(cfg, source, device)
    t0 = time.perf_counter()
    resample = cond.resample if cond is not None else 1
    total = steps * resample * ((cfg.num_samples + cfg.batch_size - 1) // cfg.batch_size)
    with progress_bar(f"sampling {sampler_cfg.name} x{steps}", total) as advance:
        samples, info = generate(source.denoise, source.alpha_bar, sampler_cfg, steps, cfg.num_samples, source.data.shape,
                                 seed=cfg.seed, batch_size=cfg.batch_size, device=device, bounded=source.data.levels is not None,
                                 on_step=advance, cond=cond)
    if cond is not None and cond.labels is not None:
        guidance = {"scale": cond.scale, "rescale": cond.rescale} if cond.null else {}
        if cond.classifier is not None:
            guidance.update(classifier_scale=cond.classifier_scale, **cond.classifier_info)
        info.update(labels=cond.labels.tolist(), guidance=guidance)
    if cond is not None and cond.known is not None:
        info["inpaint"] = {"image": cfg.inpaint.image, "mask": cfg.inpaint.mask, "resample": cond.resample, "known": cond.known, "keep": cond.mask}
    return samples, info, time.perf_counter() - t0


def describe_guidance(g: dict) -> str:
    """``guidance w=2`` / ``classifier guidance s=1 (path)`` from the guidance record of sample.json."""
    parts = []
    if "scale" in g:
        parts.append(f"guidance w={g['scale']:g}" + (f" rescale {g['rescale']:g}" if g["rescale"] else ""))
    if "classifier_scale" in g:
        parts.append(f"classifier guidance s={g['classifier_scale']:g} ({g['classifier']})")
    return ", ".join(parts)


def run_sample(cfg: DictConfig, run_dir: Path) -> dict:
    """``diffctl sample``: load the checkpoint (or oracle), generate, write grid.png, samples.npz, sample.json."""
    device = resolve_device(cfg.device)
    source = load_source(cfg, device)
    log.info("sampling from %s", source.describe())
    samples, info, seconds = sample_with_progress(source, cfg, device, cfg.steps)
    data = source.data
    log.info("visited timesteps: %s", info["timesteps"])
    files = save_samples(samples, run_dir, reference=data.test if not data.is_image else None, title=f"{cfg.sampler.name}, {cfg.steps} steps")
    if "inpaint" in info:
        inp = info.pop("inpaint")
        files["inpaint"] = str(save_inpaint_grid(inp["known"], inp["keep"], samples, run_dir / "inpaint.png"))
        info["inpaint"] = {k: inp[k] for k in ("image", "mask", "resample")}
        kept = (samples - inp["known"]).abs().mul(inp["keep"]).amax().item()
        log.info("inpainting: known pixels changed by at most %.2g; grid: input | masked input | results", kept)
    if "labels" in info:
        log.info("classes %s with %s", sorted(set(info["labels"])), describe_guidance(info["guidance"]))
    record = {**info, "num_samples": cfg.num_samples, "seed": cfg.seed, "seconds": round(seconds, 3), **source.info, **files}
    write_json(run_dir / "sample.json", record)
    log.info("%d samples in %.1fs (%s, %d steps, NFE %d%s)", cfg.num_samples, seconds, info["sampler"], cfg.steps, info["nfe"],
             f" + {info['classifier_nfe']} classifier gradients" if info["classifier_nfe"] else "")
    return record
