"""A DDPM-style UNet (Ho et al. 2020, Appendix B; improved-diffusion layout).

Residual blocks with GroupNorm and a sinusoidal time embedding added after the first conv,
self-attention at chosen feature-map resolutions, skip connections between the encoder and
decoder.  The network maps (x [N, C, H, W], t [N]) to an output of the shape of x; it knows
nothing of noise schedules.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding of (possibly fractional) timesteps: ``[N] -> [N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 2 or g == 1)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding, GroupNorm -> SiLU -> dropout -> conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(_norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # the 1x1 convolution as a matmul that writes [N, HW, 3C]: each head's channels end up contiguous
        qkv = F.linear(self.norm(x).reshape(n, c, h * w).transpose(1, 2), self.qkv.weight[..., 0], self.qkv.bias)
        # [3, N, heads, HW, C/heads] with the head dimension contiguous, as the fused (flash / memory-efficient) kernels require
        q, k, v = qkv.reshape(n, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, HW, C/heads]
        out = out.transpose(-1, -2).reshape(n, c, h * w)
        return x + self.proj(out).reshape(n, c, h, w)


class CrossAttention(nn.Module):
    """Multi-head attention from the H*W positions of a feature map to a sequence of context tokens ``[N, L, context_dim]``
    (Stable Diffusion's cross-attention: queries from the image, keys and values from the condition), with a residual.
    ``mask`` ``[N, L]`` (True = attend) hides padding tokens."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)  # starts as the identity: the condition enters gradually
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        d = c // self.heads
        q = self.q(self.norm(x).reshape(n, c, h * w).transpose(1, 2)).reshape(n, h * w, self.heads, d).transpose(1, 2)
        k, v = self.kv(context.to(q.dtype)).reshape(n, context.shape[1], 2, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        return x + self.proj(out.transpose(1, 2).reshape(n, h * w, c)).transpose(1, 2).reshape(n, c, h, w)


class ClassEmbedding(nn.Module):
    """Adds a learned label embedding to the time embedding; label ``num_classes`` (also ``y=None``)
    is the null label of classifier-free guidance.  With ``num_classes = 0`` it does nothing."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim) if num_classes else None

    def forward(self, emb: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.table is None:
            if y is not None:
                raise ValueError("this model is unconditional (trained without model.num_classes); it takes no class labels")
            return emb
        if y is None:
            y = torch.full((len(emb),), self.num_classes, dtype=torch.long, device=emb.device)
        return emb + self.table(y)


class UNet(nn.Module):
    """UNet over ``len(channel_mult)`` resolutions; attention where the feature map is in ``attn_resolutions``."""

    def __init__(
        self,
        data_shape: Sequence[int],
        classify: int = 0,
        cond_channels: int = 0,
        *,
        channels: int = 64,
        channel_mult: List[int] = (1, 2),
        num_res_blocks: int = 2,
        attn_resolutions: List[int] = (4,),
        dropout: float = 0.0,
        heads: int = 4,
        num_classes: int = 0,
        context_dim: int = 0,
    ):
        """``classify`` = K > 0 builds a noise-aware classifier instead (Dhariwal & Nichol's encoder UNet):
        the encoder and middle blocks, then GroupNorm, SiLU, global average pooling and K logits.
        ``context_dim`` > 0 adds cross-attention to context tokens of that width after every self-attention
        (at ``attn_resolutions`` and in the middle block); ``forward`` then takes ``context`` (``cond=class|text|clip``).
        ``cond_channels``: image channels concatenated to the input (super-resolution's upsampled low-resolution image);
        the output keeps the data's channels."""
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"model arch 'unet' needs image data [C, H, W]; this dataset is {list(data_shape)}: use model=mlp")
        in_channels, image_size, _ = data_shape
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image size {image_size} is not divisible by 2^{len(channel_mult) - 1} (channel_mult {list(channel_mult)})")
        if channels % heads or any((channels * m) % heads for m in channel_mult):
            raise ValueError(f"every level's channels must be divisible by heads={heads}")
        self.channels = channels
        emb_dim = 4 * channels
        self.time_embed = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = ClassEmbedding(num_classes, emb_dim)
        self.stem = nn.Conv2d(in_channels + cond_channels, channels, 3, padding=1)

        def stage(c_in, c_out, res):
            block = nn.ModuleList([ResBlock(c_in, c_out, emb_dim, dropout)])
            if res in attn_resolutions:
                block.append(Attention(c_out, heads))
                if context_dim:
                    block.append(CrossAttention(c_out, context_dim, heads))
            return block

        self.down, skips, c, res = nn.ModuleList(), [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(stage(c, channels * mult, res))
                c = channels * mult
                skips.append(c)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                res //= 2
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), Attention(c, heads),
                                  *([CrossAttention(c, context_dim, heads)] if context_dim else []), ResBlock(c, c, emb_dim, dropout)])
        self.head = nn.Sequential(_norm(c), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classify)) if classify else None
        self.skip_channels, self.mid_channels = list(skips), c  # what a ControlNet adds its residuals to
        self.up = nn.ModuleList()
        if classify:
            return
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(stage(c + skips.pop(), channels * mult, res))
                c = channels * mult
                if level > 0 and i == num_res_blocks:
                    self.up[-1].append(nn.Upsample(scale_factor=2, mode="nearest"))
                    self.up[-1].append(nn.Conv2d(c, c, 3, padding=1))
                    res *= 2
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, CrossAttention):
                h = layer(h, *context)
            else:
                h = layer(h)
        return h

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The time (and label) embedding the residual blocks add."""
        return self.label_embed(self.time_embed(timestep_embedding(t, self.channels)), y)

    def encode(self, h: torch.Tensor, emb: torch.Tensor, ctx=(None, None)) -> tuple[torch.Tensor, list]:
        """The encoder and middle block from the stem's output ``h``: (middle output, the skip activations)."""
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, ctx)
            hs.append(h)
        return self._run(self.mid, h, emb, ctx), hs

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, residuals: list | None = None) -> torch.Tensor:
        """``y``: class labels (``num_classes``); ``context`` ``[N, L, context_dim]``: the tokens cross-attention reads
        (``context_mask`` ``[N, L]``, True = a real token); ``residuals``: a ControlNet's additions to each skip activation
        and, last, to the middle block's output."""
        emb = self.embed(t, y)
        ctx = (context, context_mask)
        h, hs = self.encode(self.stem(x), emb, ctx)
        if residuals is not None:
            hs = [a + r for a, r in zip(hs, residuals)]
            h = h + residuals[-1]
        if self.head is not None:
            return self.head(h)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), emb, ctx)
        return self.out(h)
