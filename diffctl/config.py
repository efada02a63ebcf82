"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option names its schema in its defaults list (``- /schema_model_unet@_here_``), so
Hydra rejects an unknown key or a wrong type while composing, for ``--cfg job`` and ``-m``
sweeps alike.  Schemas are stored at the root (not in a group) so they never show up as
options in ``--help``.  Fields whose value must come from a fixed list are checked by
``diffctl.validation.validate`` after composition, with a message naming what is allowed.
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


@dataclass
class DigitsGMMConfig:
    name: str = "digits_gmm"  # 8x8 Gaussian mixture around the 10 class-mean digits (exact denoiser known)
    std: float = 0.2  # shared isotropic std of each component, in [-1, 1] pixel units
    num_train: int = 2000
    num_test: int = 300
    seed: int = 0


@dataclass
class VisionConfig:
    name: str = "mnist"  # mnist | fashion_mnist | cifar10 | celeba | folder | mnist5k (files in torchvision's layout under root)
    root: str = "data"  # where the files are (env DIFFCTL_DATA); for folder: <root>/<class>/<images>
    download: bool = False  # fetch with torchvision's downloader (needs a network); offline, missing files are an error naming them
    image_size: Optional[int] = None  # resize the shorter side and centre-crop to this size; None: as stored
    crop: Optional[int] = None  # centre crop (px) before resizing (CelebA: 140)
    hflip: bool = False  # random horizontal flips while training
    limit: Optional[int] = None  # use only the first N images of each split (quick runs)
    grayscale: bool = False  # folder: read images as 1-channel


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
    num_classes: int = 0  # > 0: class-conditional with a null label (classifier-free guidance); the dataset's class count


@dataclass
class OracleConfig:
    arch: str = "oracle"  # the closed-form optimal denoiser of dataset=gmm|digits_gmm; sample/eval only
    prediction: str = "x0"


@dataclass
class MLPConfig:
    arch: str = "mlp"
    prediction: str = "v"  # eps | x0 | v
    hidden: int = 256  # width of the residual blocks
    depth: int = 3  # number of residual blocks
    dropout: float = 0.0
    num_classes: int = 0  # > 0: class-conditional with a null label (classifier-free guidance)


# --- schedule ----------------------------------------------------------------------------------
@dataclass
class _Schedule:
    name: str = "linear"
    timesteps: int = 1000  # T
    zero_terminal_snr: bool = False  # rescale to zero terminal SNR (Lin et al. 2024); pair with v-prediction


@dataclass
class LinearScheduleConfig(_Schedule):
    name: str = "linear"  # DDPM: betas linear in [beta_start, beta_end]
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass
class ScaledLinearScheduleConfig(_Schedule):
    name: str = "scaled_linear"  # latent diffusion: sqrt(beta) linear
    beta_start: float = 0.00085
    beta_end: float = 0.012


@dataclass
class CosineScheduleConfig(_Schedule):
    name: str = "cosine"  # improved DDPM eq. 17
    s: float = 0.008  # offset that keeps beta_1 from being too small
    max_beta: float = 0.999  # clip near t = T


@dataclass
class SigmoidScheduleConfig(_Schedule):
    name: str = "sigmoid"  # Jabri et al. 2022 / Chen 2023
    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0  # temperature: larger is closer to linear in alpha_bar
    clip_min: float = 1e-9


@dataclass
class EDMScheduleConfig(_Schedule):
    name: str = "edm"  # Karras et al. 2022 noise levels, eq. 5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


# --- sampler -----------------------------------------------------------------------------------
@dataclass
class _Sampler:
    name: str = "ddim"
    spacing: str = "trailing"  # noise levels visited: leading | trailing | linspace | karras
    rho: float = 7.0  # warping of spacing=karras (EDM eq. 5)
    clip: Optional[bool] = None  # clamp x0_hat to [-1, 1] at every step; null: for pixel data (datasets with levels)


@dataclass
class DDPMSamplerConfig(_Sampler):
    name: str = "ddpm"  # ancestral sampling with the posterior variance (DDPM Algorithm 2)


@dataclass
class DDIMSamplerConfig(_Sampler):
    name: str = "ddim"  # DDIM eq. 12
    eta: float = 0.0  # 0: deterministic; 1: DDPM ancestral


@dataclass
class EulerSamplerConfig(_Sampler):
    name: str = "euler"  # Euler on the probability-flow ODE


@dataclass
class EulerAncestralSamplerConfig(_Sampler):
    name: str = "euler_ancestral"
    eta: float = 1.0  # share of each step's variance re-injected as fresh noise


@dataclass
class HeunSamplerConfig(_Sampler):
    name: str = "heun"  # EDM Algorithm 2 (2 NFE per step but the last)
    S_churn: float = 0.0  # total stochasticity; 0 = deterministic Heun
    S_tmin: float = 0.0  # churn only for sigma in [S_tmin, S_tmax]
    S_tmax: float = 1.0e9
    S_noise: float = 1.0  # noise inflation of the churn


@dataclass
class DPMpp2MSamplerConfig(_Sampler):
    name: str = "dpmpp_2m"  # DPM-Solver++(2M)


@dataclass
class DPMpp2MSDESamplerConfig(_Sampler):
    name: str = "dpmpp_2m_sde"  # DPM-Solver++(2M) SDE
    eta: float = 1.0
    s_noise: float = 1.0


@dataclass
class UniPCSamplerConfig(_Sampler):
    name: str = "unipc"  # UniPC bh2 predictor-corrector
    order: int = 2  # predictor order (1..3); the corrector adds one


# --- loss --------------------------------------------------------------------------------------
@dataclass
class SimpleLossConfig:
    name: str = "simple"  # uniform MSE on the target at uniform timesteps (DDPM eq. 14)


@dataclass
class MinSNRLossConfig:
    name: str = "min_snr"  # Hang et al. 2023: weight min(SNR, gamma) on the x0 error
    gamma: float = 5.0


@dataclass
class EDMLossConfig:
    name: str = "edm"  # Karras et al. 2022: lambda(sigma) at lognormal noise levels
    sigma_data: float = 0.5
    p_mean: float = -1.2  # ln sigma ~ N(p_mean, p_std^2)
    p_std: float = 1.2


# --- trainer / optim / paths -------------------------------------------------------------------
@dataclass
class TrainerConfig:
    steps: int = 2500  # optimisation steps
    batch_size: int = 64
    precision: str = "auto"  # auto (bf16 where supported, CPU too) | bf16 | fp16 (GradScaler) | fp32
    ema_decay: float = 0.999  # EMA of weights, with warm-up min(decay, (1+n)/(10+n))
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ckpt_every: int = 1000  # checkpoint cadence in steps (a final one is always written)
    keep_last: int = 3  # checkpoints kept in checkpoints/
    log_every: int = 50  # metrics.jsonl cadence
    sample_every: int = 1000  # sample grid PNG cadence (0 disables; a final grid is always written)
    sample_steps: int = 50  # steps of the config's sampler for those grids
    num_grid: int = 64  # images in each grid
    compile: bool = False  # torch.compile the network for training (minutes of compilation, then faster steps on GPU)
    channels_last: bool = False  # NHWC memory layout for conv nets (faster convolutions on tensor-core GPUs)
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions for fp32 work
    max_nonfinite: int = 10  # this many non-finite losses / gradients in a row (each step skipped) stop the run
    cond_drop_prob: float = 0.1  # class-conditional models: probability of training with the null label (classifier-free guidance)


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
    loss: Any = None
    trainer: Any = None
    optim: Any = None
    paths: Any = None
    seed: int = 0
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    task: str = "diffusion"  # diffusion | classifier: a noise-aware classifier of the dataset's classes, for guidance.classifier=
    resume: str = "auto"  # auto: continue from this run folder's newest checkpoint | never | <run folder or file>


@dataclass
class GuidanceConfig:
    scale: float = 1.0  # classifier-free guidance w: 1 = the conditional model, 0 = unconditional, > 1 stronger
    rescale: float = 0.0  # phi in [0, 1]: guidance rescale (Lin et al. 2024) against over-saturation at large w
    classifier: Optional[str] = None  # classifier guidance: a task=classifier checkpoint | run folder | latest | oracle (model=oracle)
    classifier_scale: float = 1.0  # s in D + s sigma^2 grad log p(y | x): 1 = Bayes' rule with the classifier, > 1 sharper


@dataclass
class InpaintConfig:
    image: Any = None  # a test-split index or a PNG path: the image to edit
    mask: Optional[str] = None  # the region to regenerate: left | right | top | bottom | center, or a PNG (white = regenerate)
    resample: int = 1  # RePaint: repeat each (DDPM) step this many times, re-noising in between


@dataclass
class SampleConfig:
    sampler: Any = None
    model: Any = None  # only model=oracle (with dataset=, schedule=): a checkpoint brings its own
    dataset: Any = None
    schedule: Any = None
    paths: Any = None
    ckpt: str = "latest"  # checkpoint file | run folder | latest
    steps: int = 50  # sampling steps (NFE for ddim / ddpm)
    num_samples: int = 64
    batch_size: int = 256
    seed: int = 0  # image i uses seed + i
    ema: bool = True  # sample with the EMA weights
    device: str = "auto"
    classes: Any = None  # class-conditional models: all, [3, 7] (cycled over the images) or 3; None: unconditional (the null label)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)


@dataclass
class EvalConfig:
    sampler: Any = None
    model: Any = None
    dataset: Any = None
    schedule: Any = None
    paths: Any = None
    ckpt: str = "latest"
    metrics: List[str] = field(default_factory=list)  # the default list is in configs/eval.yaml; those that apply run, the others are listed as skipped
    samplers: List[str] = field(default_factory=list)  # several samplers: a quality-vs-NFE grid (with steps=[...])
    steps: Any = 50  # an int, or a list of step counts for the grid
    num_samples: int = 1000
    batch_size: int = 500
    seed: int = 0
    ema: bool = True
    device: str = "auto"
    inception_weights: Optional[str] = None  # TF-Inception weights file for fid/kid/is (also env DIFFCTL_INCEPTION_WEIGHTS)
    classes: Any = None  # class-conditional models: all, [3, 7] or 3; None: unconditional samples
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)


@dataclass
class InspectConfig:
    schedule: Any = None
    dataset: Any = None  # the image noised in the forward-process strip
    sampler: Any = None  # with steps: which timesteps such a sampler would visit
    paths: Any = None
    compare: List[str] = field(default_factory=list)  # more schedules to overlay, e.g. [linear,cosine,sigmoid]
    steps: int = 50
    rows: int = 10  # table rows, evenly spaced in t
    image_index: int = 0  # which test image the strip noises


SCHEMAS = {
    "schema_dataset_digits": DigitsConfig,
    "schema_dataset_toy2d": Toy2dConfig,
    "schema_model_unet": UNetConfig,
    "schema_model_mlp": MLPConfig,
    "schema_model_oracle": OracleConfig,
    "schema_dataset_digits_gmm": DigitsGMMConfig,
    "schema_dataset_vision": VisionConfig,
    "schema_schedule_linear": LinearScheduleConfig,
    "schema_schedule_scaled_linear": ScaledLinearScheduleConfig,
    "schema_schedule_cosine": CosineScheduleConfig,
    "schema_schedule_sigmoid": SigmoidScheduleConfig,
    "schema_schedule_edm": EDMScheduleConfig,
    "schema_loss_simple": SimpleLossConfig,
    "schema_loss_min_snr": MinSNRLossConfig,
    "schema_loss_edm": EDMLossConfig,
    "schema_sampler_ddpm": DDPMSamplerConfig,
    "schema_sampler_ddim": DDIMSamplerConfig,
    "schema_sampler_euler": EulerSamplerConfig,
    "schema_sampler_euler_ancestral": EulerAncestralSamplerConfig,
    "schema_sampler_heun": HeunSamplerConfig,
    "schema_sampler_dpmpp_2m": DPMpp2MSamplerConfig,
    "schema_sampler_dpmpp_2m_sde": DPMpp2MSDESamplerConfig,
    "schema_sampler_unipc": UniPCSamplerConfig,
    "schema_trainer": TrainerConfig,
    "schema_optim_adamw": AdamWConfig,
    "schema_paths": PathsConfig,
    "schema_train": TrainConfig,
    "schema_sample": SampleConfig,
    "schema_eval": EvalConfig,
    "schema_inspect_schedule": InspectConfig,
}


def load_option(group: str, name: str) -> DictConfig:
    """The shipped YAML of option ``name`` in config ``group`` (its schema line dropped)."""
    from importlib import resources

    from omegaconf import OmegaConf

    folder = resources.files("diffctl.configs") / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ValueError(f"unknown {group} {name!r}; choose from: {', '.join(options)}")
    cfg = OmegaConf.create(path.read_text())
    cfg.pop("defaults", None)
    return cfg


def register_schemas() -> None:
    cs = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        cs.store(name=name, node=node)
