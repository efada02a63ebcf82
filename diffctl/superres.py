"""Super-resolution, SR3-style (Saharia et al. 2021): ``diffctl train task=superres superres.factor=2|4``.

The denoiser sees, beside the noisy image, the low-resolution image upsampled (bicubic) and
concatenated to its input channels.  The low-resolution image is made from the data by area
downsampling (each low-resolution pixel the mean of a factor x factor patch); training may degrade
it further, as cascaded diffusion's conditioning augmentation does: with probability 1/2 a
Gaussian blur of ``superres.blur`` pixels, and Gaussian noise of a standard deviation drawn
uniformly in [0, ``superres.noise``].  The condition is dropped to a blank (mid-grey) image at
``trainer.cond_drop_prob``, so classifier-free guidance works as for labels and prompts.

Sampling takes low-resolution inputs from ``superres.image=`` (test-split indices, a PNG or a
folder of PNGs, at the low or at the full resolution; default the test split), cycled over the
images, and draws low-res | bicubic | samples | real rows.  ``diffctl eval`` scores the samples
against the real images: PSNR and SSIM beside bicubic upsampling's, consistency (the sample
downsampled again against its input), and every sample metric (fd_ref ...) as for any model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import UsageError
from .prompting import Cond, PixelTables, dropped

FACTORS = (2, 4)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area downsampling ``[N, C, H, W]`` -> ``[N, C, H/f, W/f]``: each pixel the mean of its f x f patch."""
    return F.avg_pool2d(x, factor)


def bicubic(low: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling by ``factor``, clamped to the pixel range [-1, 1]."""
    return F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of ``sigma`` pixels (3 sigma each side), edges replicated."""
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class LowResCond(Cond):
    """``task=superres``: the condition of an image is its area-downsampled copy (augmented in training)."""

    name = "lowres"
    needs_labels = False

    def __init__(self, data_shape, record: Optional[dict] = None, *, factor: int = 2, noise: float = 0.0, blur: float = 0.0,
                 pixels=None):
        """``data_shape``: the images' (a latent model's pixels'; ``pixels``: that dataset, whose low-resolution copies a
        latent run looks up by item index)."""
        if record:
            factor, data_shape = record["factor"], record.get("shape", data_shape)
        c, h, w = data_shape
        self.factor, self.noise, self.blur, self.shape = int(factor), float(noise), float(blur), (c, h, w)
        self.null = torch.zeros(c, h // self.factor, w // self.factor)  # mid-grey: no image
        self.lookup = PixelTables(pixels, lambda x: downsample(x, self.factor)) if pixels is not None else None

    def draw(self, x0, y, drop, g, index=None, train=True):
        low = downsample(x0, self.factor) if self.lookup is None else self.lookup(index, train)
        if drop:  # training draws (held-out batches draw with drop 0: no augmentation either)
            if self.blur:
                blurred = gaussian_blur(low, self.blur)
                pick = torch.rand(len(low), 1, 1, 1, generator=g, device=low.device) < 0.5
                low = torch.where(pick, blurred, low)
            if self.noise:
                std = torch.rand(len(low), 1, 1, 1, generator=g, device=low.device) * self.noise
                low = low + std * torch.randn(low.shape, generator=g, device=low.device, dtype=low.dtype)
        return dropped(low, self.null, drop, g)

    def inputs(self, labels):
        raise UsageError("a super-resolution model upsamples images: give superres.image=, not classes=")

    def network(self, model_cfg, data_shape, classify: int = 0, pretrained: bool = True):
        from .models import build_model
        from .models.context import ImageConditioned

        return ImageConditioned(build_model(model_cfg, data_shape, classify, cond_channels=self.shape[0]), self.null)

    def record(self):
        return {"name": self.name, "factor": self.factor, "shape": list(self.shape)}


def superres_inputs(spec, cond: LowResCond, data) -> tuple[torch.Tensor, Optional[torch.Tensor], list]:
    """(low-resolution inputs ``[M, C, h, w]``, the real images ``[M, C, H, W]`` when known, their names) of
    ``superres.image``: None (the test split), a test index or a list of them, a PNG, or a folder of PNGs; a PNG
    at the model's full resolution is downsampled (and is then the real image), one at the low resolution is the input."""
    from .data.inputs import load_png, test_images

    c, h, w = cond.shape
    f = cond.factor
    chosen = test_images(spec, data, "superres.image")
    if chosen is not None:
        return downsample(chosen[0], f), *chosen
    path = Path(str(spec)).expanduser()
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png") if path.is_dir() else [path]
    if not files:
        raise UsageError(f"superres.image={spec}: no .png files in that folder")
    lows, reals = [], []
    for p in files:
        if not p.is_file():
            raise UsageError(f"superres.image={spec}: no such file or folder (give test indices, a PNG or a folder of PNGs)")
        from .data.vision import open_image

        size = open_image(str(p), "superres.image").size
        if size == (w, h):
            reals.append(load_png(str(p), (c, h, w), "superres.image"))
            lows.append(downsample(reals[-1][None], f)[0])
        elif size == (w // f, h // f):
            lows.append(load_png(str(p), (c, h // f, w // f), "superres.image"))
        else:
            raise UsageError(f"superres.image={p} is {size[0]}x{size[1]}; this {f}x model takes {w // f}x{h // f} inputs "
                             f"(or {w}x{h} images, which it downsamples)")
    real = torch.stack(reals) if len(reals) == len(lows) else None
    return torch.stack(lows), real, [p.name for p in files]


def save_superres_grid(lows: torch.Tensor, reals: Optional[torch.Tensor], samples: torch.Tensor, factor: int, path: Path,
                       per_row: int = 6) -> Path:
    """Rows of: the low-resolution input (pixels enlarged), its bicubic upsampling, up to ``per_row`` samples of it
    (sample i is of input i mod M) and the real image when known, for up to 8 inputs."""
    from .io.images import save_grid

    m = len(lows)
    rows = []
    for j in range(min(m, 8)):
        mine = samples[j::m][:per_row].float()
        row = [F.interpolate(lows[j:j + 1], scale_factor=factor, mode="nearest"), bicubic(lows[j:j + 1], factor), mine]
        row.append(torch.zeros(per_row - len(mine), *samples.shape[1:]))
        row.append(reals[j:j + 1] if reals is not None else torch.zeros(1, *samples.shape[1:]))
        rows.append(torch.cat(row))
    save_grid(torch.cat(rows), path, nrow=per_row + 3, headers=[("low-res", 1), ("bicubic", 1), ("samples", per_row), ("real", 1)])
    return path
