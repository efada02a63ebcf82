"""Typed schemas for every config group, registered in Hydra's ConfigStore.

The options of a registered choice (a dataset, model, schedule, sampler or loss) are written once,
as the keyword-only parameters of its function in the registry (``diffctl.core.registry``); the
schema of each option is made from that signature on top of its group's shared fields (``BASES``),
so a YAML file holds only what differs from the code's defaults.  Each YAML option names its schema
in its defaults list (``- /schema_sampler_ddim@_here_``), so Hydra rejects an unknown key or a wrong
type while composing, for ``--cfg job`` and ``-m`` sweeps alike.  Schemas are stored at the root
(not in a group) so they never show up as options in ``--help``.  Fields whose value must come
from a fixed list are checked by ``diffctl.validation.validate`` after composition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, make_dataclass
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, DictConfig, OmegaConf

from .core.losses import LOSSES
from .core.samplers import SAMPLERS
from .core.schedules import SCHEDULES
from .data import DATASETS
from .loggers import LOGGERS
from .models import AUTOENCODERS, MODELS
from .prompting import CONDS


# --- the fields every option of a group shares -------------------------------------------------
@dataclass
class DatasetBase:
    name: str = "digits"


@dataclass
class ModelBase:
    arch: str = "unet"
    prediction: str = "eps"  # what the network outputs: eps | x0 | v (a choice of the preconditioning's c_skip, c_out)
    sigma_data: float = 1.0  # the data's std that the preconditioning assumes (EDM: 0.5)
    lr: float = 2e-3  # the peak learning rate this network trains at (optim.lr follows it unless set)


@dataclass
class ScheduleBase:
    name: str = "linear"
    timesteps: int = 1000  # T
    zero_terminal_snr: bool = False  # rescale to zero terminal SNR (Lin et al. 2024); pair with v-prediction


@dataclass
class SamplerBase:
    name: str = "ddim"
    spacing: str = "trailing"  # noise levels visited: leading | trailing | linspace | karras
    rho: float = 7.0  # warping of spacing=karras (EDM eq. 5)
    clip: Optional[bool] = None  # clamp x0_hat to [-1, 1] at every step; null: for pixel data (datasets with levels)


@dataclass
class LossBase:
    name: str = "simple"


@dataclass
class LoggerBase:
    name: str = "csv"


@dataclass
class AutoencoderBase:
    name: str = "kl"


@dataclass
class CondBase:
    name: str = "none"


# group -> (registry of its choices, shared fields)
GROUPS = {"dataset": (DATASETS, DatasetBase), "model": (MODELS, ModelBase), "schedule": (SCHEDULES, ScheduleBase),
          "sampler": (SAMPLERS, SamplerBase), "loss": (LOSSES, LossBase), "logger": (LOGGERS, LoggerBase),
          "autoencoder": (AUTOENCODERS, AutoencoderBase), "cond": (CONDS, CondBase)}


@functools.lru_cache(maxsize=None)
def option_schema(group: str, name: str) -> type:
    """The schema of choice ``name`` of ``group``: the group's shared fields, ``key = name``, and the keyword-only
    parameters of the registered function with their types and defaults."""
    registry, base = GROUPS[group]
    fields = [(registry.key, str, field(default=name))]
    for option, (kind, default) in registry.options(name).items():
        if isinstance(default, (tuple, list)):
            fields.append((option, kind, field(default_factory=functools.partial(list, default))))
        else:
            fields.append((option, kind, field(default=default)))
    return make_dataclass(f"{group}_{name}", fields, bases=(base,))


# --- trainer / optim / paths -------------------------------------------------------------------
@dataclass
class TrainerConfig:
    steps: int = 2500  # optimisation steps
    batch_size: int = 64  # the global batch: what one optimisation step sees, over all processes and micro-batches
    accumulate: int = 1  # split each process's batch into this many micro-batches (gradient accumulation: less memory, the same step)
    precision: str = "auto"  # auto (bf16 where computed natively: CUDA, AVX-512/AMX CPUs; else fp16 on CUDA, fp32) | bf16 | fp16 (GradScaler) | fp32
    ema_decay: float = 0.999  # EMA of weights, with warm-up min(decay, (1+n)/(10+n))
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ckpt_every: int = 1000  # checkpoint cadence in steps (a final one is always written)
    keep_last: int = 3  # checkpoints kept in checkpoints/
    log_every: int = 50  # metrics.jsonl cadence
    eval_every: int = 250  # held-out loss (a fixed test batch at fixed noise) at the log lines of these steps and the last; 0 disables
    eval_batch: int = 256  # test items in that fixed batch
    sample_every: int = 1000  # sample grid PNG cadence (0 disables; a final grid is always written)
    sample_steps: int = 50  # steps of the config's sampler for those grids
    num_grid: int = 64  # images in each grid
    # torch.compile the training step (network + loss): false | true (torch's default mode) | reduce-overhead (CUDA graphs)
    # | max-autotune | max-autotune-no-cudagraphs; minutes of compilation, then faster steps
    compile: str = "false"
    channels_last: bool = False  # NHWC memory layout for conv nets (faster convolutions on tensor-core GPUs)
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions for fp32 work
    max_nonfinite: int = 10  # this many non-finite losses / gradients in a row (each step skipped) stop the run
    cond_drop_prob: float = 0.1  # conditional models: probability of training with the null label / empty prompt (classifier-free guidance)


@dataclass
class AdamWConfig:
    name: str = "adamw"
    lr: float = II("model.lr")  # the model preset's own by default
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


@dataclass
class SuperresConfig:
    factor: int = 2  # task=superres: upsampling factor, 2 or 4 (the low-resolution image is area-downsampled by it)
    noise: float = 0.0  # conditioning augmentation: Gaussian noise of std ~ U[0, noise] on the low-res image in training
    blur: float = 0.0  # conditioning augmentation: a Gaussian blur of this sigma (pixels) on half of the low-res images in training


@dataclass
class SuperresInput:
    image: Any = None  # a super-resolution model's inputs: test indices ([0,5] or 3), a PNG or a folder of PNGs; null: the test split


@dataclass
class ControlInput:
    image: Any = None  # a ControlNet's controls: test indices (their controls), or a PNG of the control itself; null: the test split
    scale: float = 1.0  # the ControlNet's additions times this: 0 = the base model, bit for bit


@dataclass
class LatentConfig:
    autoencoder: Optional[str] = None  # a task=autoencoder run folder | checkpoint | latest: train in its latent space


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
    logger: Any = None  # logger=tensorboard | csv | none, or several: logger=[tensorboard,csv]
    autoencoder: Any = None  # what task=autoencoder trains
    cond: Any = None  # cross-attention conditioning: cond=none | class | text | clip
    latent: LatentConfig = field(default_factory=LatentConfig)  # latent diffusion: latent.autoencoder=<run>
    superres: SuperresConfig = field(default_factory=SuperresConfig)  # what task=superres learns
    base: Optional[str] = None  # task=controlnet: the frozen diffusion run it controls (run folder | checkpoint | latest)
    control: str = "edges"  # task=controlnet: edges | lowres | mask, made from each image
    seed: int = 0
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch's CPU threads; None: torch's default (the cores); lower it when other work shares the machine
    task: str = "diffusion"  # diffusion | classifier (noise-aware, for guidance.classifier=) | autoencoder (for latent diffusion) | superres | controlnet
    resume: str = "auto"  # auto: continue from this run folder's newest checkpoint | never | <run folder or file>


@dataclass
class GuidanceConfig:
    scale: float = 1.0  # classifier-free guidance w: 1 = the conditional model, 0 = unconditional, > 1 stronger
    rescale: float = 0.0  # phi in [0, 1]: guidance rescale (Lin et al. 2024) against over-saturation at large w
    classifier: Optional[str] = None  # classifier guidance: a task=classifier checkpoint | run folder | latest | oracle (with ckpt=oracle)
    classifier_scale: float = 1.0  # s in D + s sigma^2 grad log p(y | x): 1 = Bayes' rule with the classifier, > 1 sharper


@dataclass
class InpaintConfig:
    image: Any = None  # a test-split index or a PNG path: the image to edit
    mask: Optional[str] = None  # the region to regenerate: left | right | top | bottom | center, or a PNG (white = regenerate)
    resample: int = 1  # RePaint: repeat each (DDPM) step this many times, re-noising in between


@dataclass
class SampleConfig:
    sampler: Any = None
    dataset: Any = None  # only with ckpt=oracle (a checkpoint brings its own): dataset=gmm | digits_gmm
    schedule: Any = None  # only with ckpt=oracle: the noise levels to sample on (default linear)
    paths: Any = None
    ckpt: str = "latest"  # checkpoint file | run folder | latest | oracle: the exact denoiser of dataset=gmm|digits_gmm
    steps: int = 50  # sampling steps (NFE for ddim / ddpm)
    num_samples: int = 64
    batch_size: int = 256
    seed: int = 0  # image i uses seed + i
    ema: bool = True  # sample with the EMA weights
    device: str = "auto"
    threads: Optional[int] = None  # torch's CPU threads; None: torch's default (the cores); lower it when other work shares the machine
    classes: Any = None  # class-conditional models: all, [3, 7] (cycled over the images) or 3; None: unconditional (the null label)
    prompt: Optional[str] = None  # a text-conditioned model (cond=text|clip): the prompt of every image
    prompts: Any = None  # a list of prompts cycled over the images, or train | heldout: the templated captions of that set (with classes=)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    control: ControlInput = field(default_factory=ControlInput)
    superres: SuperresInput = field(default_factory=SuperresInput)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)


@dataclass
class EvalConfig:
    sampler: Any = None
    dataset: Any = None  # only with ckpt=oracle
    schedule: Any = None  # only with ckpt=oracle
    paths: Any = None
    ckpt: str = "latest"  # checkpoint file | run folder | latest | oracle
    metrics: List[str] = field(default_factory=list)  # the default list is in configs/eval.yaml; those that apply run, the others are listed as skipped
    samplers: List[str] = field(default_factory=list)  # several samplers: a quality-vs-NFE grid (with steps=[...])
    steps: Any = 50  # an int, or a list of step counts for the grid
    num_samples: int = 1000
    batch_size: int = 500
    seed: int = 0
    ema: bool = True
    device: str = "auto"
    threads: Optional[int] = None  # torch's CPU threads; None: torch's default (the cores); lower it when other work shares the machine
    inception_weights: Optional[str] = None  # TF-Inception weights file for fid/kid/is (also env DIFFCTL_INCEPTION_WEIGHTS)
    classes: Any = None  # class-conditional models: all, [3, 7] or 3; None: unconditional samples
    prompt: Optional[str] = None  # a text-conditioned model (cond=text|clip): the prompt of every image
    prompts: Any = None  # a list of prompts cycled over the images, or train | heldout: the templated captions of that set (with classes=)
    control: ControlInput = field(default_factory=ControlInput)
    superres: SuperresInput = field(default_factory=SuperresInput)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)


@dataclass
class ExportConfig:
    paths: Any = None
    ckpt: str = "latest"  # checkpoint file | run folder | latest
    ema: bool = True  # export the EMA weights (false: the raw ones)
    format: str = "safetensors"  # model.safetensors + diffctl.json | diffusers: a DDPMPipeline folder (model=diffusers_unet runs)
    threads: Optional[int] = None  # torch's CPU threads; None: torch's default (the cores); lower it when other work shares the machine


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
    threads: Optional[int] = None  # torch's CPU threads; None: torch's default (the cores); lower it when other work shares the machine


def _schemas() -> dict:
    out = {f"schema_{group}_{name}": option_schema(group, name) for group, (registry, _) in GROUPS.items() for name in registry}
    out.update({"schema_trainer": TrainerConfig, "schema_optim_adamw": AdamWConfig, "schema_paths": PathsConfig, "schema_train": TrainConfig,
                "schema_sample": SampleConfig, "schema_eval": EvalConfig, "schema_export": ExportConfig, "schema_inspect_schedule": InspectConfig})
    return out


def load_option(group: str, name: str) -> DictConfig:
    """The shipped option ``name`` of config ``group``, merged onto its schema (a YAML holds only what differs)."""
    from importlib import resources

    folder = resources.files("diffctl.configs") / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ValueError(f"unknown {group} {name!r}; choose from: {', '.join(options)}")
    cfg = OmegaConf.create(path.read_text())
    schema = next(str(d)[1:].split("@")[0] for d in cfg.pop("defaults") if str(d).startswith("/schema_"))
    return OmegaConf.merge(OmegaConf.structured(_schemas()[schema]), cfg)


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore; one this function stored before (the same class, its entry still the
    store's) is kept, since building a structured config costs about 2 ms and each command run in a process calls this
    (a test runs hundreds). An entry stored over it since (shell completion's plain-dict schemas) is replaced."""
    cs = ConfigStore.instance()
    for name, node in _schemas().items():
        stored, entry = _STORED.get(name, (None, None))
        if stored is not node or cs.repo.get(f"{name}.yaml") is not entry:
            cs.store(name=name, node=node)
            _STORED[name] = (node, cs.repo[f"{name}.yaml"])


_STORED: dict = {}  # schema name -> (the class register_schemas last stored under it, the store's entry it made)
