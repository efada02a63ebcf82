"""Super-resolution against the real images (a ``task=superres`` model's samples, each the upsampling of a
test image's low-resolution copy): PSNR and SSIM beside bicubic upsampling's, and consistency.

    sr_psnr         mean PSNR (dB) of the samples against the real images; floor: bicubic upsampling's
    sr_ssim         mean SSIM (Gaussian window, sigma 1.5 px); floor: bicubic's
    sr_consistency  mean squared error of the samples downsampled again against their inputs (SR3's
                    consistency: ~0 for a model that honours its input); floor: bicubic's
    control_fidelity  a ControlNet's samples against their controls (F1 of edges, IoU of masks, PSNR of the
                    2x-downsampled image); floor: the real images the controls came from (the ceiling)

``floor`` here is the baseline a super-resolution model must beat, not a real-vs-real floor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import EvalContext, Skipped, register


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image ``[N]``."""
    mse = (x.float().clamp(-1, 1) - y.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, data_range: float = 2.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image ``[N]``, averaged over pixels and channels: local means,
    variances and covariance under a Gaussian window of ``sigma`` pixels (radius 3 sigma, edges replicated, so any
    image size works), K1 = 0.01, K2 = 0.03 of ``data_range`` (2 for [-1, 1])."""
    x, y = x.double(), y.double()
    r = min(int(3 * sigma + 0.5), min(x.shape[-2:]) - 1)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]

    def blur(a):
        a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(F.pad(a, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def _bicubic(low: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(low.float(), scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def superres_scores(samples: torch.Tensor, lows: torch.Tensor, reals, factor: int) -> dict:
    """Means over the samples (sample i upsamples input i mod M): psnr / ssim against the real images when known, and
    consistency, each beside bicubic upsampling's."""
    idx = torch.arange(len(samples)) % len(lows)
    low, cubic = lows[idx].float(), _bicubic(lows[idx], factor)
    out = {}
    if reals is not None:
        real = reals[idx].float()
        out.update(psnr=psnr(samples, real).mean().item(), psnr_bicubic=psnr(cubic, real).mean().item(),
                   ssim=ssim(samples, real).mean().item(), ssim_bicubic=ssim(cubic, real).mean().item())
    out.update(consistency_mse=(F.avg_pool2d(samples.float(), factor) - low).pow(2).flatten(1).mean(1).mean().item(),
               consistency_mse_bicubic=(F.avg_pool2d(cubic, factor) - low).pow(2).flatten(1).mean(1).mean().item())
    return out


def _pairs(ctx: EvalContext):
    cond = ctx.conditioning()
    if cond is None or cond.superres is None:
        raise Skipped("needs a super-resolution model (diffctl train task=superres)")
    lows, reals, _ = cond.superres
    samples = ctx.samples()
    factor = samples.shape[-1] // lows.shape[-1]
    idx = torch.arange(len(samples)) % len(lows)
    return samples.float(), lows[idx].float(), None if reals is None else reals[idx].float(), factor


def _mean(values: torch.Tensor, baseline: torch.Tensor) -> dict:
    n = len(values)
    return {"value": values.mean().item(), "err": (values.std() / n**0.5).item() if n > 1 else 0.0, "floor": baseline.mean().item(),
            "floor_err": (baseline.std() / n**0.5).item() if n > 1 else 0.0, "n": n, "floor_is": "bicubic upsampling"}


def _images(data):
    return None if data.is_image else "needs image data"


@register("sr_psnr", _images, better="higher")
@torch.no_grad()
def sr_psnr(ctx: EvalContext) -> dict:
    """PSNR of super-resolved samples against the real images, beside bicubic upsampling's."""
    samples, low, real, f = _pairs(ctx)
    return _mean(psnr(samples, real), psnr(_bicubic(low, f), real))


@register("sr_ssim", _images, better="higher")
@torch.no_grad()
def sr_ssim(ctx: EvalContext) -> dict:
    """SSIM of super-resolved samples against the real images, beside bicubic upsampling's."""
    samples, low, real, f = _pairs(ctx)
    return _mean(ssim(samples, real), ssim(_bicubic(low, f), real))


@register("sr_consistency", _images)
@torch.no_grad()
def sr_consistency(ctx: EvalContext) -> dict:
    """Mean squared error of the samples area-downsampled back against their low-resolution inputs, beside bicubic's."""
    samples, low, _, f = _pairs(ctx)
    err = lambda x: (F.avg_pool2d(x, f) - low).pow(2).flatten(1).mean(1)
    return _mean(err(samples), err(_bicubic(low, f)))


@register("control_fidelity", _images, better="higher")
@torch.no_grad()
def control_fidelity(ctx: EvalContext) -> dict:
    """How well a ControlNet's samples follow their controls (``control.fidelity``), beside the real images they came from."""
    from ..control import fidelity

    cond = ctx.conditioning()
    if cond is None or cond.control is None:
        raise Skipped("needs a ControlNet (diffctl train task=controlnet base=<run>)")
    controls, reals, _ = cond.control
    samples = ctx.samples().float()
    idx = torch.arange(len(samples)) % len(controls)
    kind = ctx.options["control_kind"]
    real = fidelity(kind, reals[idx], controls[idx]) if reals is not None else torch.full((len(samples),), float("nan"))
    out = _mean(fidelity(kind, samples, controls[idx]), real)
    out["floor_is"] = "the real images the controls came from (a ceiling)"
    out["unit"] = {"edges": "F1 of edge pixels", "mask": "IoU", "lowres": "PSNR dB at half resolution"}[kind]
    return out
