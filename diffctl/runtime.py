"""Device and precision choices, and rebuilding a trained model from its checkpoint."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .core.schedules import make_alpha_bar
from .errors import UsageError
from .io.checkpoint import load_checkpoint
from .models import build_model


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; an unavailable device is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device supports it (CPU autocast does), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" else "fp32"


def autocast(device: torch.device, precision: str):
    """The ``torch.autocast`` context for a precision name (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def schedule_alpha_bar(schedule_cfg: DictConfig) -> torch.Tensor:
    """alpha_bar ``[T]`` (float64) of a ``schedule`` config group."""
    params = {k: v for k, v in OmegaConf.to_container(schedule_cfg).items() if k not in ("name", "timesteps")}
    return make_alpha_bar(schedule_cfg.name, schedule_cfg.timesteps, **params)


@dataclass
class Trained:
    """What sampling and evaluation need from a training run."""

    net: torch.nn.Module
    cfg: DictConfig  # the training run's resolved config
    alpha_bar: torch.Tensor  # float64 [T]
    step: int
    path: Path


def load_trained(path: Path, device: torch.device, ema: bool = True) -> Trained:
    """Rebuild model and schedule from the config stored in the checkpoint at ``path``."""
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    data_shape = tuple(state["data_shape"])
    net = build_model(cfg.model, data_shape)
    key = "ema" if ema and state.get("ema") is not None else "model"
    try:
        net.load_state_dict(state[key])
    except RuntimeError as e:
        raise UsageError(f"{path}: weights do not match the model in its config ({str(e).splitlines()[0]})") from None
    return Trained(net=net.to(device).eval(), cfg=cfg, alpha_bar=schedule_alpha_bar(cfg.schedule), step=int(state["step"]), path=Path(path))
