"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option names its schema in its defaults list (``- /schema_model_unet@_here_``), so
Hydra rejects an unknown key or a wrong type while composing, for ``--cfg job`` and ``-m``
sweeps alike.  Schemas are stored at the root (not in a group) so they never show up as
options in ``--help``.  Fields whose value must come from a fixed list are checked by
``validate`` after composition, with a message naming what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig


# --- dataset -----------------------------------------------------------------------------------
@dataclass
class DigitsConfig:
    name: str = "digits"  # scikit-learn's bundled 8x8 digits; 17 pixel levels, 10 classes


@dataclass
class Toy2dConfig:
    name: str = "moons"  # swiss_roll | moons | gmm
    num_train: int = 20000  # points in the train split
    num_test: int = 5000  # points in the test split
    seed: int = 0  # generator seed of the points (test uses seed + 1)


# --- model -------------------------------------------------------------------------------------
@dataclass
class UNetConfig:
    arch: str = "unet"
    prediction: str = "eps"  # what the network outputs: eps | x0 | v
    channels: int = 64  # base channel count
    channel_mult: List[int] = field(default_factory=lambda: [1, 2])  # channels per resolution level
    num_res_blocks: int = 2  # residual blocks per level
    attn_resolutions: List[int] = field(default_factory=lambda: [4])  # feature-map sizes with self-attention
    dropout: float = 0.0
    heads: int = 4  # attention heads


@dataclass
class MLPConfig:
    arch: str = "mlp"
    prediction: str = "eps"  # eps | x0 | v
    hidden: int = 256  # width of the residual blocks
    depth: int = 3  # number of residual blocks
    dropout: float = 0.0


# --- schedule ----------------------------------------------------------------------------------
@dataclass
class LinearScheduleConfig:
    name: str = "linear"  # DDPM: betas linear in [beta_start, beta_end]
    timesteps: int = 1000  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass
class CosineScheduleConfig:
    name: str = "cosine"  # improved DDPM eq. 17
    timesteps: int = 1000  # T
    s: float = 0.008  # offset that keeps beta_1 from being too small
    max_beta: float = 0.999  # clip near t = T


# --- sampler -----------------------------------------------------------------------------------
@dataclass
class DDPMSamplerConfig:
    name: str = "ddpm"  # ancestral sampling with the posterior variance (DDPM Algorithm 2)
    spacing: str = "trailing"  # which timesteps steps < T visits: leading | trailing | linspace
    clip: bool = False  # clamp x0_hat to [-1, 1] at every step


@dataclass
class DDIMSamplerConfig:
    name: str = "ddim"  # DDIM eq. 12
    eta: float = 0.0  # 0: deterministic; 1: DDPM ancestral
    spacing: str = "trailing"  # leading | trailing | linspace
    clip: bool = False  # clamp x0_hat to [-1, 1] at every step


# --- trainer / optim / paths -------------------------------------------------------------------
@dataclass
class TrainerConfig:
    steps: int = 3000  # optimisation steps
    batch_size: int = 64
    precision: str = "auto"  # auto (bf16 where supported, CPU too) | bf16 | fp16 (GradScaler) | fp32
    ema_decay: float = 0.999  # EMA of weights, with warm-up min(decay, (1+n)/(10+n))
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ckpt_every: int = 1000  # checkpoint cadence in steps (a final one is always written)
    keep_last: int = 3  # checkpoints kept in checkpoints/
    log_every: int = 50  # metrics.jsonl cadence
    sample_every: int = 1000  # sample grid PNG cadence (0 disables; a final grid is always written)
    sample_steps: int = 50  # DDIM steps for those grids
    num_grid: int = 64  # images in each grid


@dataclass
class AdamWConfig:
    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100  # linear LR warm-up
    decay: str = "cosine"  # after warm-up: constant | cosine (to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1


@dataclass
class PathsConfig:
    output_root: str = "outputs"  # where run folders go (env DIFFCTL_OUTPUT_ROOT)
    cache_dir: str = "outputs/.cache"  # reference classifiers and statistics


# --- commands ----------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    dataset: Any = None
    model: Any = None
    schedule: Any = None
    sampler: Any = None
    trainer: Any = None
    optim: Any = None
    paths: Any = None
    seed: int = 0
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    resume: str = "auto"  # auto: continue from this run folder's newest checkpoint | never | <run folder or file>


@dataclass
class SampleConfig:
    sampler: Any = None
    paths: Any = None
    ckpt: str = "latest"  # checkpoint file | run folder | latest
    steps: int = 50  # sampling steps (NFE for ddim / ddpm)
    num_samples: int = 64
    batch_size: int = 256
    seed: int = 0  # image i uses seed + i
    ema: bool = True  # sample with the EMA weights
    device: str = "auto"


@dataclass
class EvalConfig:
    sampler: Any = None
    paths: Any = None
    ckpt: str = "latest"
    metrics: List[str] = field(default_factory=lambda: ["test_loss", "fd_ref", "swd"])  # those that apply run
    steps: int = 50
    num_samples: int = 1000
    batch_size: int = 500
    seed: int = 0
    ema: bool = True
    device: str = "auto"


@dataclass
class InspectConfig:
    schedule: Any = None
    paths: Any = None
    rows: int = 10  # table rows, evenly spaced in t


SCHEMAS = {
    "schema_dataset_digits": DigitsConfig,
    "schema_dataset_toy2d": Toy2dConfig,
    "schema_model_unet": UNetConfig,
    "schema_model_mlp": MLPConfig,
    "schema_schedule_linear": LinearScheduleConfig,
    "schema_schedule_cosine": CosineScheduleConfig,
    "schema_sampler_ddpm": DDPMSamplerConfig,
    "schema_sampler_ddim": DDIMSamplerConfig,
    "schema_trainer": TrainerConfig,
    "schema_optim_adamw": AdamWConfig,
    "schema_paths": PathsConfig,
    "schema_train": TrainConfig,
    "schema_sample": SampleConfig,
    "schema_eval": EvalConfig,
    "schema_inspect_schedule": InspectConfig,
}


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)


# Values that must come from a fixed list, by dotted key.
CHOICES = {
    "model.prediction": ("eps", "x0", "v"),
    "trainer.precision": ("auto", "bf16", "fp16", "fp32"),
    "sampler.spacing": ("leading", "trailing", "linspace"),
    "optim.decay": ("constant", "cosine"),
}


def validate(cfg: DictConfig) -> None:
    """Checks Hydra cannot make: keys added with ``+`` that a schema lacks, and fixed choices.

    Raises ValueError with one line naming what is allowed.
    """
    from dataclasses import fields, is_dataclass

    from omegaconf import OmegaConf

    for group, node in cfg.items():
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is not None and is_dataclass(schema):
            allowed = [f.name for f in fields(schema)]
            extra = [k for k in node.keys() if k not in allowed]
            if extra:
                raise ValueError(f"unknown key {group}.{extra[0]}; {group} ({schema.__name__}) has: {', '.join(allowed)}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed; choose from: {', '.join(allowed)}")
    device = cfg.get("device")
    if device is not None and not (device in ("auto", "cpu", "cuda", "mps") or str(device).startswith("cuda:")):
        raise ValueError(f"device={device!r} is not allowed; choose from: auto, cpu, cuda, cuda:N, mps")
