"""ControlNet (Zhang et al. 2023) on a frozen UNet: a trainable copy of the base network's stem, encoder
and middle block reads the noisy image plus a control image (through a small "hint" network), and its
activations reach the frozen base through zero-initialised 1x1 convolutions, added to the base's skip
connections and middle-block output.  At initialisation every zero convolution outputs 0, so the
controlled network is the base network exactly; ``scale`` multiplies the additions (0: the base model,
bit for bit, since the additions are then skipped)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .unet import UNet


def zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlledUNet(nn.Module):
    """``forward(x, t, y)``: the frozen ``base`` UNet steered by the control image ``y`` ``[N, control_channels, H, W]``
    (``y=None``: the null control, zeros)."""

    def __init__(self, base: UNet, control_channels: int, null: torch.Tensor, downsample: int = 1):
        """``downsample``: how much smaller the base's input is than the control (a latent model's autoencoder factor): the
        hint network halves the control's resolution that many times over (Stable Diffusion's ControlNet: 512 -> 64)."""
        super().__init__()
        if not isinstance(base, UNet) or base.head is not None:
            raise ValueError("a ControlNet controls a diffctl unet (model.arch=unet)")
        self.base = base.requires_grad_(False)
        self.stem, self.down, self.mid = copy.deepcopy(base.stem), copy.deepcopy(base.down), copy.deepcopy(base.mid)
        for part in (self.stem, self.down, self.mid):
            part.requires_grad_(True)  # the trainable copy starts from the base's weights
        width = base.channels
        hint = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(hint.weight)
        nn.init.zeros_(hint.bias)
        halve = [m for _ in range(max(downsample, 1).bit_length() - 1)
                 for m in (nn.Conv2d(width // 2, width // 2, 3, stride=2, padding=1), nn.SiLU())]
        self.hint = nn.Sequential(nn.Conv2d(control_channels, width // 2, 3, padding=1), nn.SiLU(), *halve,
                                  nn.Conv2d(width // 2, width, 3, padding=1), nn.SiLU(), hint)
        self.zero = nn.ModuleList([zero_conv(c) for c in [*base.skip_channels, base.mid_channels]])
        self.register_buffer("null", null, persistent=False)
        self.scale = 1.0  # control.scale at sampling

    _run = staticmethod(UNet._run)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # frozen: whatever dropout it has stays off
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.scale == 0:
            return self.base(x, t)
        if y is None:
            y = self.null.expand(len(x), *self.null.shape)
        emb = self.base.embed(t)
        h, hs = UNet.encode(self, self.stem(x) + self.hint(y.to(x.dtype)), emb)
        residuals = [self.scale * z(a) for z, a in zip(self.zero, [*hs, h])]
        return self.base(x, t, residuals=residuals)
