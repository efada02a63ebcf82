"""Context encoders: what turns a condition into the tokens a UNet's cross-attention reads (``cond=``).

    ClassTokens   a class label -> one learned token (label K, one past the last class, is the null label)
    TextEncoder   word ids -> a small transformer's tokens, trained jointly with the denoiser (GLIDE's recipe)
    FrozenCLIP    CLIP token ids -> a frozen Hugging Face CLIP text encoder's last hidden states (Stable Diffusion's)

Each maps ``y`` to ``(tokens [N, L, dim], mask [N, L] or None)``; ``Conditioned`` puts one in front of a
network.  ``ImageConditioned`` is the other way in: an image concatenated to the network's input
channels (super-resolution's low-resolution image, SR3).  Token id 0 is padding for ``TextEncoder`` and every prompt starts with id 1 (a start token), so
the empty prompt, the null condition of classifier-free guidance, is one real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS = 0, 1


class ClassTokens(nn.Module):
    """``y`` ``[N]`` class labels -> one learned token each; label ``num_classes`` is the null label."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor):
        return self.table(y)[:, None], None


class TextBlock(nn.Module):
    """Pre-norm transformer block: self-attention over the prompt's real tokens, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        h = h + self.proj(a.transpose(1, 2).reshape(n, length, d))
        return h + self.mlp(self.norm2(h))


class TextEncoder(nn.Module):
    """``y`` ``[N, L]`` word ids (0 = padding, each row starting with the start token 1) -> ``[N, L, dim]`` tokens
    of a ``layers``-deep transformer with learned positions, and the mask of the real tokens."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.blocks = nn.ModuleList([TextBlock(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, y: torch.Tensor):
        mask = y != PAD
        h = self.words(y) + self.positions[: y.shape[1]]
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h), mask


class FrozenCLIP(nn.Module):
    """A Hugging Face ``CLIPTextModel`` that is never trained: ``y`` ``[N, 77]`` CLIP token ids -> its last hidden
    states (every position, as Stable Diffusion reads them), then ``proj`` to the UNet's ``dim`` when the widths differ
    (the one trained part)."""

    def __init__(self, clip: nn.Module, dim: int):
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()
        width = clip.config.hidden_size
        self.proj = nn.Identity() if width == dim else nn.Linear(width, dim)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen: no dropout, whatever the network around it does
        return self

    def forward(self, y: torch.Tensor):
        with torch.no_grad():
            h = self.clip(input_ids=y).last_hidden_state
        return self.proj(h), None


class Conditioned(nn.Module):
    """``net(x, t, context=, context_mask=)`` behind a context encoder: ``forward(x, t, y)`` with ``y`` what the
    encoder reads (labels or token ids); ``y=None`` is the null condition ``null`` (one item's ``y``)."""

    def __init__(self, net: nn.Module, encoder: nn.Module, null: torch.Tensor):
        super().__init__()
        self.net, self.encoder = net, encoder
        self.register_buffer("null", null, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            y = self.null.expand(len(x), *self.null.shape)
        context, mask = self.encoder(y)
        return self.net(x, t, context=context, context_mask=mask)


class ImageConditioned(nn.Module):
    """``net(cat[x, resized y], t)``: ``y`` a low-resolution image, resized (bicubic) to x's height and width and
    concatenated to x's channels (SR3; for a latent model, to the latents' size, as latent diffusion's super-resolution
    does); ``y=None`` is the null image ``null``."""

    def __init__(self, net: nn.Module, null: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("null", null, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            y = self.null.expand(len(x), *self.null.shape)
        up = F.interpolate(y.to(x.dtype), size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False)
        return self.net(torch.cat([x, up], dim=1), t)
