"""Generation as a library: turn a denoiser D(x, sigma) into samples.

No config files are read and nothing is written here: ``generate`` takes a denoiser, a schedule,
a sampler config group and what steers it (``Conditioning``), and returns a ``Generated``.
The ``diffctl sample`` command (``diffctl.sample``) and ``diffctl eval`` reach it through
``diffctl.steering``, which reads the sample/eval config; training draws its sample grids here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from omegaconf import DictConfig

from .core.guidance import classifier_free, classifier_guided, inpainting, repaint
from .core.samplers import SAMPLERS
from .core.schedules import sampling_sigmas, sigma_to_t

log = logging.getLogger("diffctl.generation")


class PerImageNoise:
    """Standard normal noise where image i always draws from its own generator seeded ``seed + i``.

    So image i draws the same noise whatever the batch size or the batch it lands in (and is the same image up to float
    rounding: a batch's shape changes the order of the network's float sums, by about 1e-6).
    """

    def __init__(self, seed: int, start: int, count: int, shape: tuple, device: torch.device):
        self.gens = [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]
        self.shape, self.device = tuple(shape), device

    def __call__(self, step: int = -1) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g, dtype=torch.float64) for g in self.gens])
        return z.to(self.device)


class CallCounter:
    """Wraps D(x, sigma) and counts its calls (``calls``: the NFE of one batch); the output is D's own."""

    def __init__(self, denoise: Callable):
        self.denoise, self.calls = denoise, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *cond) -> torch.Tensor:
        self.calls += 1
        return self.denoise(x, sigma, *cond)


def clamp_x0(denoise: Callable) -> Callable:
    """D(x, sigma) with x0_hat clamped to [-1, 1], the range of pixel data."""
    def clamped(x: torch.Tensor, sigma: torch.Tensor, *cond) -> torch.Tensor:
        return denoise(x, sigma, *cond).clamp(-1, 1)

    return clamped


def visited_timesteps(sigmas: torch.Tensor, alpha_bar: torch.Tensor) -> list:
    """The training timesteps (fractional for karras spacing) of the nonzero noise levels."""
    t = sigma_to_t(sigmas[:-1].cpu(), alpha_bar).tolist()
    return [int(round(v)) if abs(v - round(v)) < 1e-6 else round(v, 3) for v in t]


def class_labels(count: int, classes) -> torch.Tensor:
    """The requested class of image i: ``classes`` cycled (so image i's class does not depend on batching)."""
    classes = list(classes)
    return torch.tensor([classes[i % len(classes)] for i in range(count)], dtype=torch.long)


def class_columns(labels, most: int = 16) -> int:
    """Grid columns so that each column is one class, for labels that cycle through the classes (``class_labels``);
    0 (the default layout) otherwise."""
    if labels is None or not len(labels):
        return 0
    k = len(dict.fromkeys(labels.tolist()))
    return k if 1 < k <= most and torch.equal(labels, class_labels(len(labels), labels[:k].tolist())) else 0


def grid_layout(labels, prompts, title: str, most: int = 16) -> dict:
    """``save_grid``'s title and layout for images asked for ``labels`` / ``prompts`` (as cycled over the images): one row
    per prompt with its text at the left, or one headed column per class; a single prompt goes into the title."""
    if prompts:
        distinct = list(dict.fromkeys(prompts))
        if len(distinct) == 1:
            return {"title": f'{title}; prompt "{distinct[0]}"'}
        if len(distinct) <= most and all(p == distinct[i % len(distinct)] for i, p in enumerate(prompts)):
            return {"title": title, "rows": [list(range(j, len(prompts), len(distinct))) for j in range(len(distinct))], "row_labels": distinct}
        return {"title": title}
    k = class_columns(labels, most)
    return {"title": title, "nrow": k, "headers": [(f"class {c}", 1) for c in labels[:k].tolist()]} if k else {"title": title}


@dataclass
class Conditioning:
    """What steers generation: a condition per image (class labels, or prompts as token ids) with classifier-free
    guidance, and/or classifier guidance towards class labels, and/or inpainting."""

    labels: Optional[torch.Tensor] = None  # [num_samples] requested classes (None: unconditional, or prompts of no known class)
    null: Optional[torch.Tensor] = None  # the network's null condition, one item's (None: the network takes no condition)
    scale: float = 1.0  # guidance.scale w: 1 = conditional, 0 = unconditional
    rescale: float = 0.0  # guidance.rescale phi
    known: Optional[torch.Tensor] = None  # [C, H, W] clean image whose masked pixels are kept
    mask: Optional[torch.Tensor] = None  # [C, H, W], 1 = known
    resample: int = 1  # RePaint resampling
    classifier: Optional[Callable] = None  # log p(y | x, sigma) [N, K] of a noise-aware classifier: classifier guidance
    classifier_scale: float = 1.0
    classifier_info: dict = field(default_factory=dict)  # which classifier (checkpoint and step), for the records
    inputs: Optional[torch.Tensor] = None  # [num_samples, ...] what the network is given per image (None: the labels)
    prompts: Optional[list] = None  # the prompt of each image (a text-conditioned model)
    pixels: Optional[tuple] = None  # a latent model's inpainting: (known image, mask) in pixels; ``known`` / ``mask`` are its latents'
    superres: Optional[tuple] = None  # super-resolution: (low-res inputs [M, ...], their real images [M, ...] or None, names); image i is of input i mod M
    control: Optional[tuple] = None  # a ControlNet: (control images [M, ...], the real images they come from or None, names); image i has control i mod M

    @property
    def condition(self) -> Optional[torch.Tensor]:
        """[num_samples, ...] the network's condition per image, or None."""
        return self.inputs if self.inputs is not None else self.labels

    @property
    def guided(self) -> bool:
        """Classifier-free guidance applies: a condition per image and a network that has a null condition."""
        return self.condition is not None and self.null is not None

    def steer(self, denoise: Callable, start: int, count: int, noise: PerImageNoise) -> Callable:
        """The denoiser D(x, sigma) of images ``start .. start + count``: ``denoise(x, sigma[, condition])`` with
        classifier-free guidance on their condition, then classifier guidance, then inpainting (``noise()``:
        the images' fixed draw that noises the known region)."""
        d = denoise
        if self.guided:
            d = classifier_free(denoise, self.condition[start:start + count], self.null, self.scale, self.rescale)
        if self.classifier is not None:
            d = classifier_guided(d, self.classifier, self.labels[start:start + count], self.classifier_scale)
        if self.known is not None:
            d = inpainting(d, self.known.expand(count, *self.known.shape), self.mask.expand(count, *self.mask.shape), noise())
        return d

    @property
    def passes(self) -> int:
        """Network passes per denoiser call."""
        return 2 if self.guided and self.scale not in (0.0, 1.0) else 1

    @property
    def classifier_passes(self) -> int:
        """Classifier gradients (forward + backward) per denoiser call."""
        return int(self.classifier is not None and self.classifier_scale != 0.0)

    def guidance(self) -> dict:
        """The guidance record: classifier-free ``scale`` and ``rescale`` (a class-conditional model),
        ``classifier_scale`` and which classifier (classifier guidance)."""
        record = {"scale": self.scale, "rescale": self.rescale} if self.null is not None else {}
        if self.classifier is not None:
            record.update(classifier_scale=self.classifier_scale, **self.classifier_info)
        return record


@dataclass
class Generated:
    """What ``generate`` made, and how."""

    samples: torch.Tensor  # float32 [N, ...] on CPU
    sampler: str  # the sampler's name, or "repaint (ddpm, resample R)"
    steps: int
    spacing: str
    clip: bool  # x0_hat was clamped to [-1, 1]
    nfe: int  # network passes per image
    classifier_nfe: int  # classifier gradients per image
    timesteps: list  # the visited training timesteps
    seconds: float
    conditioning: Optional[Conditioning] = None  # what steered it (None: nothing)

    @property
    def labels(self) -> Optional[torch.Tensor]:
        """[N] the requested class of each image (class-steered generation), else None."""
        return self.conditioning.labels if self.conditioning is not None else None

    @property
    def prompts(self) -> Optional[list]:
        """The prompt of each image (a text-conditioned model), else None."""
        return self.conditioning.prompts if self.conditioning is not None else None

    @property
    def guidance(self) -> Optional[dict]:
        """``Conditioning.guidance()`` of generation steered by classes, prompts or images, else None."""
        return self.conditioning.guidance() if self.conditioning is not None and self.conditioning.condition is not None else None

    def record(self) -> dict:
        """The fields that sample.json records: sampler, steps, spacing, clip, nfe, classifier_nfe, timesteps,
        and labels, prompts and guidance when classes or prompts were requested."""
        out = {"sampler": self.sampler, "steps": self.steps, "spacing": self.spacing, "clip": self.clip, "nfe": self.nfe,
               "classifier_nfe": self.classifier_nfe, "timesteps": self.timesteps}
        if self.labels is not None:
            out["labels"] = self.labels.tolist()
        if self.prompts is not None:
            out["prompts"] = list(self.prompts)
        if self.guidance is not None:
            out["guidance"] = self.guidance
        return out


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
    on_step: Optional[Callable[..., None]] = None,
    cond: Optional[Conditioning] = None,
) -> Generated:
    """Sample ``num_samples`` items of ``shape`` with the denoiser D(x, sigma) on a schedule.

    ``sampler_cfg``: a sampler config group (name, spacing, rho, clip and the sampler's options).
    ``bounded``: the data lies in [-1, 1] (pixel data), so ``sampler.clip=null`` clamps x0_hat.
    ``on_step(i, sigma, x, x0_hat)`` is called after every sampler step of every batch (the sampler's state x).  Image i's noise depends
    only on ``seed + i``, not on the batch size (its pixels, up to float rounding).
    """
    t0 = time.perf_counter()
    sigmas = sampling_sigmas(sampler_cfg.spacing, alpha_bar, steps, sampler_cfg.rho).to(device)
    if sampler_cfg.name == "heun" and len(sigmas) > 2 and sigmas[1] > 0 and 50 * sigmas[1] < sigmas[0] <= sampler_cfg.get("euler_above", 50.0) * sigmas[1]:
        log.warning("heun's first step goes from sigma %.3g to %.3g: its trapezoidal correction over so long a step amplifies "
                    "any error, and trained models then give noise, not images (see docs/samplers.md); lower sampler.euler_above to 50 "
                    "(that step taken as Euler's), use sampler.spacing=karras with a schedule of moderate sigma_max, or dpmpp_2m / unipc",
                    sigmas[0].item(), sigmas[1].item())
    clip = bounded if sampler_cfg.clip is None else sampler_cfg.clip
    repainting = cond is not None and cond.resample > 1
    callback = on_step
    out, calls = [], 0  # calls: denoiser calls per image (every batch makes the same number)
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        noise = PerImageNoise(seed, start, count, shape, device)
        x = noise() * sigmas[0]  # x_T = sigma_max z in the scaled variable x = x_t / sqrt(alpha_bar_t)
        steered = cond.steer(denoise, start, count, noise) if cond is not None else denoise
        counted = CallCounter(clamp_x0(steered) if clip else steered)
        if repainting:
            x = repaint(counted, x, sigmas, resample=cond.resample, noise=noise, callback=callback)
        else:
            x = SAMPLERS.build(sampler_cfg, counted, x, sigmas, noise=noise, callback=callback)
        out.append(x.float().cpu())
        calls = counted.calls
    return Generated(
        samples=torch.cat(out),
        sampler=f"repaint (ddpm, resample {cond.resample})" if repainting else sampler_cfg.name,
        steps=steps, spacing=sampler_cfg.spacing, clip=clip,
        nfe=calls * (cond.passes if cond else 1), classifier_nfe=calls * (cond.classifier_passes if cond else 0),
        timesteps=visited_timesteps(sigmas, alpha_bar), seconds=time.perf_counter() - t0, conditioning=cond)
