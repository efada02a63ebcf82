"""A KL-regularised convolutional autoencoder in the Stable Diffusion family (Rombach et al. 2022,
"AutoencoderKL"), sized for small images: the space latent diffusion denoises in.

The encoder maps an image [C, H, W] to a diagonal Gaussian over latents [latent_channels, H/d, W/d]
(d = ``downsample``, a power of two: one stride-2 convolution per halving); the decoder maps a
latent back.  Training minimises, per image,

    mean_pixels (x - decode(z))^2 + kl_weight * mean_latents KL(q(z | x) || N(0, I)),   z = mean + std * eps

(the reconstruction MSE, and the KL per latent element: a light pull towards a standard normal so
that the latent space has no holes; Stable Diffusion's VAE uses a weight of 1e-6 on the summed KL
with L1 + perceptual + adversarial reconstruction terms).  The noise eps is an input, so the
training step draws it on the device like every other draw.

With ``disc_weight`` > 0 a patch discriminator (pix2pix / taming-transformers' PatchGAN, GroupNorm
instead of BatchNorm) joins, with hinge losses:

    + disc_weight * (-mean D(decode(z)))                     the decoder is pushed towards what D calls real
    + 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(decode(z))))  D learns to tell them apart

in one loss and one optimiser: the first term sees D's weights detached (``torch.func.functional_call``)
and the second the reconstruction detached, so each network gets only its own gradient, and the
training loop (accumulation, DDP, the skip rule, resume) is the same as without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .unet import _norm

AUTOENCODER_WIDTHS = (1, 2, 2, 4)  # channel multipliers by level (SD's VAE: 1, 2, 4, 4)


class Block(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, + skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class PatchDiscriminator(nn.Module):
    """Real-or-reconstructed logits per patch ``[N, 1, h, w]``: stride-2 convolutions (to 2x2 patches at most), then one
    3x3 convolution to a logit each."""

    def __init__(self, in_channels: int, size: int, channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        while size > 2 and c < 8 * channels:
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _norm(2 * c), nn.LeakyReLU(0.2)]
            c, size = 2 * c, size // 2
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class KLAutoencoder(nn.Module):
    """``encode(x) -> (mean, logvar)``, ``decode(z) -> x``, ``forward(x, noise) -> (recon, mean, logvar[, adversarial terms])``;
    ``latent_shape``.  ``kl_weight`` and ``disc_weight`` are the loss's (``Reconstruction``), kept with the network it trains."""

    def __init__(self, data_shape, *, downsample: int = 4, latent_channels: int = 4, channels: int = 32, num_res_blocks: int = 1,
                 kl_weight: float = 1e-4, disc_weight: float = 0.0, disc_channels: int = 32):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"an autoencoder needs image data [C, H, W]; this dataset's items are {list(data_shape)}")
        levels = int(math.log2(downsample)) if downsample >= 1 else -1
        if 2**levels != downsample or levels > len(AUTOENCODER_WIDTHS) - 1:
            raise ValueError(f"autoencoder.downsample={downsample}: choose 1, 2, 4 or 8")
        c, h, w = data_shape
        if h % downsample or w % downsample:
            raise ValueError(f"autoencoder.downsample={downsample} does not divide the images' {h}x{w}: choose one that does")
        self.data_shape, self.downsample, self.kl_weight, self.disc_weight = tuple(data_shape), downsample, kl_weight, disc_weight
        self.latent_shape = (latent_channels, h // downsample, w // downsample)
        widths = [channels * m for m in AUTOENCODER_WIDTHS[: levels + 1]]
        enc: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            prev = widths[max(i - 1, 0)]
            enc += [Block(prev if j == 0 else width, width) for j in range(num_res_blocks)]
            if i < levels:
                enc.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        enc += [Block(widths[-1], widths[-1]), _norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), Block(widths[-1], widths[-1])]
        for i in reversed(range(len(widths))):
            nxt = widths[max(i - 1, 0)]
            dec += [Block(widths[i], widths[i]) for _ in range(num_res_blocks)]
            if i > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(widths[i], nxt, 3, padding=1)]
        dec += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], c, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.discriminator = PatchDiscriminator(c, min(h, w), disc_channels) if disc_weight > 0 else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z | x): its mean and log-variance, each [N, *latent_shape]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple:
        """(reconstruction, mean, logvar); the reconstruction decodes z = mean + std * noise (the mean when no noise).
        In training with a discriminator, also ``adversarial(x, reconstruction)``."""
        mean, logvar = self.encode(x)
        z = mean if noise is None else mean + (0.5 * logvar).exp() * noise.to(mean.dtype)
        recon = self.decode(z)
        if self.discriminator is None or not self.training:
            return recon, mean, logvar
        return recon, mean, logvar, self.adversarial(x, recon)

    def adversarial(self, x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the decoder's hinge term -mean D(recon), through D's weights detached (it trains the autoencoder only),
        and D's hinge loss on x and the detached reconstruction (it trains D only), each ``[N]``."""
        d = self.discriminator
        frozen = {k: v.detach() for k, v in d.named_parameters()}
        fool = -torch.func.functional_call(d, frozen, (recon,)).float().flatten(1).mean(1)
        real, fake = d(x).float(), d(recon.detach()).float()
        critic = 0.5 * (F.relu(1 - real).flatten(1).mean(1) + F.relu(1 + fake).flatten(1).mean(1))
        return fool, critic



def autoencoder_loss(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Per image: reconstruction MSE + kl_weight * KL(q(z | x) || N(0, I)) per latent element, ``[N]``."""
    mse = (recon.float() - x.float()).pow(2).flatten(1).mean(1)
    mean, logvar = mean.float(), logvar.float()
    return mse + kl_weight * 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).mean(1)


class Reconstruction:
    """What training calls: the autoencoder's forward (through DDP's or torch.compile's wrapper, if any), then its loss:
    ``autoencoder_loss``, plus ``disc_weight`` times the decoder's adversarial term and the discriminator's own loss."""

    def __init__(self, net, kl_weight: float, disc_weight: float = 0.0):
        self.net, self.kl_weight, self.disc_weight = net, kl_weight, disc_weight

    def loss(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        recon, mean, logvar, *adv = self.net(x, noise)
        loss = autoencoder_loss(x, recon, mean, logvar, self.kl_weight)
        if adv:
            fool, critic = adv[0]
            loss = loss + self.disc_weight * fool + critic
        return loss


def psnr(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image ``[N]``."""
    mse = (recon.float().clamp(-1, 1) - x.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))

