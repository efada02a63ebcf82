"""Networks by registry name (``model.arch``); they know nothing of noise schedules."""

from __future__ import annotations

from torch import nn

from .mlp import MLP
from .unet import UNet

ARCHS = ("unet", "mlp", "oracle")


def build_model(model_cfg, data_shape, classify: int = 0) -> nn.Module:
    """Build the network of ``model_cfg`` for data of shape ``[C, H, W]`` or ``[D]``; ``classify`` = K > 0:
    the noise-aware classifier of that architecture (K logits)."""
    arch = model_cfg.arch
    if arch == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"model arch 'unet' needs image data [C, H, W]; this dataset is {list(data_shape)}: use model=mlp")
        c, h, w = data_shape
        return UNet(
            in_channels=c,
            image_size=h,
            channels=model_cfg.channels,
            channel_mult=tuple(model_cfg.channel_mult),
            num_res_blocks=model_cfg.num_res_blocks,
            attn_resolutions=tuple(model_cfg.attn_resolutions),
            dropout=model_cfg.dropout,
            heads=model_cfg.heads,
            num_classes=model_cfg.get("num_classes", 0),  # checkpoints from before conditioning lack the key
            classify=classify,
        )
    if arch == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model arch 'mlp' needs vector data [D]; this dataset is {list(data_shape)}: use a unet model")
        return MLP(dim=data_shape[0], hidden=model_cfg.hidden, depth=model_cfg.depth, dropout=model_cfg.dropout, num_classes=model_cfg.get("num_classes", 0), classify=classify)
    if arch == "oracle":
        raise ValueError("model=oracle is the exact denoiser of dataset=gmm or digits_gmm: use it with diffctl sample or eval (no training needed)")
    raise ValueError(f"unknown model arch {arch!r}; choose from {list(ARCHS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
