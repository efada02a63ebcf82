"""Networks by registry name (``model.arch``); they know nothing of noise schedules.

A model is a class ``Net(data_shape, classify=0, *, <options>)``: its keyword-only parameters are
the fields of its ``model`` config group (besides ``prediction`` and ``sigma_data``, which belong
to the preconditioning that wraps every network).  ``classify`` = K > 0 builds the noise-aware
classifier of that architecture (K logits).
"""

from __future__ import annotations

from torch import nn

from ..core.registry import Registry
from .autoencoder import KLAutoencoder
from .diffusers_unet import DiffusersUNet
from .mlp import MLP
from .unet import UNet

MODELS = Registry("model", key="arch")
MODELS.register("unet")(UNet)
MODELS.register("mlp")(MLP)
MODELS.register("diffusers_unet")(DiffusersUNet)
AUTOENCODERS = Registry("autoencoder")  # task=autoencoder's networks, by autoencoder.name
AUTOENCODERS.register("kl")(KLAutoencoder)


def build_model(model_cfg, data_shape, classify: int = 0, context_dim: int | None = None, cond_channels: int = 0) -> nn.Module:
    """The network of ``model_cfg`` for data of shape ``[C, H, W]`` or ``[D]``; ``context_dim`` (the unet) overrides
    ``model.context_dim``: the width of the context tokens its cross-attention reads, 0 for none; ``cond_channels`` (the
    unet): image channels concatenated to its input."""
    if context_dim is not None:
        model_cfg = {**model_cfg, "context_dim": context_dim}
    if cond_channels:
        return MODELS.build(model_cfg, tuple(data_shape), classify, cond_channels)
    return MODELS.build(model_cfg, tuple(data_shape), classify)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
