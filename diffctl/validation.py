"""Checks of a composed config that Hydra's typed schemas cannot make: fixed choices, numeric
ranges, finite numbers, required groups and keys added with ``+``.  ``validate`` raises
ValueError with one line naming what is allowed; the CLI prints it and exits 2.  ``check_training``
checks what a training run needs of its dataset, device and processes, once they are known.
"""

from __future__ import annotations

from omegaconf import DictConfig

from .config import GROUPS, EvalConfig, ExportConfig, InspectConfig, SampleConfig, TrainConfig
from .core.diffusion import PREDICTIONS
from .core.schedules import SPACINGS

# Values that must come from a fixed list, by dotted key (a group's own choice, such as sampler.name,
# is checked by Hydra: it is the option's file name).
CHOICES = {
    "model.prediction": PREDICTIONS,
    "trainer.precision": ("auto", "bf16", "fp16", "fp32"),
    "sampler.spacing": SPACINGS.names(),
    "optim.decay": ("constant", "cosine"),
    "task": ("diffusion", "classifier", "autoencoder", "superres", "controlnet"),
    "superres.factor": (2, 4),
    "control": ("edges", "lowres", "mask"),
    "format": ("safetensors", "diffusers"),
    "cond.unknown_words": ("error", "skip"),
}


# Numeric bounds, by dotted key: (lowest allowed, whether the bound itself is allowed).
BOUNDS = {
    "trainer.steps": (1, True), "trainer.batch_size": (1, True), "trainer.keep_last": (0, True),
    "trainer.log_every": (0, True), "trainer.eval_every": (0, True), "trainer.accumulate": (1, True), "trainer.eval_batch": (1, True), "trainer.ckpt_every": (0, True), "trainer.sample_every": (0, True),
    "trainer.sample_steps": (1, True), "trainer.num_grid": (1, True), "trainer.ema_decay": (0, True), "trainer.grad_clip": (0, True),
    "optim.lr": (0, False), "optim.warmup_steps": (0, True), "schedule.timesteps": (2, True),
    "num_samples": (1, True), "batch_size": (1, True), "rows": (2, True),
    "sampler.eta": (0, True), "sampler.order": (1, True), "sampler.S_churn": (0, True), "sampler.S_noise": (0, True),
    "sampler.s_noise": (0, True), "sampler.euler_above": (1, True), "sampler.rho": (0, False), "loss.gamma": (0, False), "model.sigma_data": (0, False),
    "model.num_classes": (0, True), "trainer.cond_drop_prob": (0, True), "guidance.scale": (0, True), "guidance.rescale": (0, True),
    "guidance.classifier_scale": (0, True),
    "inpaint.resample": (1, True), "trainer.max_nonfinite": (1, True), "model.lr": (0, False),
    "autoencoder.latent_channels": (1, True), "autoencoder.channels": (1, True), "autoencoder.num_res_blocks": (1, True),
    "autoencoder.kl_weight": (0, True), "autoencoder.disc_weight": (0, True), "superres.noise": (0, True), "superres.blur": (0, True), "autoencoder.disc_channels": (1, True),
    "model.channels": (1, True), "model.heads": (1, True), "model.num_res_blocks": (1, True), "model.hidden": (1, True),
    "model.depth": (0, True), "model.dropout": (0, True), "dataset.num_train": (1, True), "dataset.num_test": (1, True),
    "dataset.std": (0, False), "optim.weight_decay": (0, True), "optim.beta1": (0, True), "optim.beta2": (0, True),
    "optim.min_lr_ratio": (0, True), "loss.p_std": (0, False), "image_index": (0, True),
    "dataset.image_size": (1, True), "dataset.crop": (1, True), "dataset.limit": (1, True), "threads": (1, True), "dataset.workers": (0, True),
    "model.context_dim": (0, True), "seed": (0, True), "cond.layers": (0, True), "cond.heads": (1, True), "cond.max_words": (1, True),
}
# Upper limits: real ones (probabilities, orders) and, for sizes, limits far beyond any real use that
# catch a typo (an extra 0s) before it allocates the machine's memory or runs for a century.
UPPER = {"sampler.order": 3, "trainer.ema_decay": 1, "sampler.eta": 1, "trainer.cond_drop_prob": 1, "guidance.rescale": 1,
         "model.dropout": 0.99, "optim.beta1": 0.9999, "optim.beta2": 0.99999, "optim.min_lr_ratio": 1,
         "optim.lr": 10, "trainer.steps": 10**9, "trainer.batch_size": 2**20, "trainer.num_grid": 4096, "trainer.eval_batch": 2**16, "trainer.accumulate": 4096, "trainer.sample_steps": 10**5,
         "schedule.timesteps": 10**5, "num_samples": 10**8, "batch_size": 2**20, "rows": 10**4, "model.channels": 8192,
         "model.num_res_blocks": 64, "model.hidden": 2**16, "model.depth": 1024, "model.num_classes": 10**6,
         "dataset.num_train": 10**8, "dataset.num_test": 10**8, "dataset.image_size": 4096, "dataset.crop": 16384, "inpaint.resample": 1000,
         "model.context_dim": 8192, "cond.layers": 64, "cond.max_words": 512, "threads": 4096, "dataset.workers": 1024, "seed": 2**62,
         "autoencoder.channels": 8192, "autoencoder.latent_channels": 1024, "autoencoder.num_res_blocks": 64, "autoencoder.disc_channels": 8192,
         "cond.heads": 1024, "model.heads": 1024}
MAX_STEPS = 10**5  # sampling steps
IMAGE_INPUTS = ("superres.image", "control.image", "inpaint.image")  # test indices or a path to an image


def _index_or_path(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(v.strip()))


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
    required = {TrainConfig: ("dataset", "model", "schedule", "sampler", "loss", "trainer", "optim", "paths"),
                SampleConfig: ("sampler", "paths"), EvalConfig: ("sampler", "paths"),
                InspectConfig: ("schedule", "dataset", "sampler", "paths"), ExportConfig: ("paths",)}.get(OmegaConf.get_type(cfg), ())
    for group in required:
        if cfg.get(group) is None:
            raise ValueError(f"{group} is required here (it was removed); choose one of its options: {group}=<option>")
    for key in ("paths.output_root", "paths.cache_dir"):
        if not str(OmegaConf.select(cfg, key, default="x")).strip():
            raise ValueError(f"{key} is empty; give a folder (e.g. outputs)")
    check_values(cfg)


def check_values(cfg: DictConfig) -> None:
    """Numbers finite and within BOUNDS / UPPER, fixed choices from CHOICES: of a composed config, and of
    the config a checkpoint brings (so a crafted one cannot ask for a 100 GB model).  Raises ValueError."""
    import math

    from omegaconf import ListConfig, OmegaConf

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, DictConfig):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    def unlimited(key: str) -> bool:
        """An option whose default is +inf (no limit, such as sampler.S_tmax) may be +inf."""
        group, _, option = key.partition(".")
        if group not in GROUPS:
            return False
        registry = GROUPS[group][0]
        choice = OmegaConf.select(cfg, f"{group}.{registry.key}", default=None)
        return choice in registry and registry.options(choice).get(option, (None, None))[1] == math.inf

    for key, value in leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value) and not (value == math.inf and unlimited(key)):
            raise ValueError(f"{key}={value} is not a finite number")
    for key, (low, inclusive) in BOUNDS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or isinstance(value, (list, ListConfig)):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{key}={value!r} is not a number")
        high = UPPER.get(key)
        if (value < low if inclusive else value <= low) or (high is not None and value > high):
            rng = f"{'>=' if inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
            raise ValueError(f"{key}={value} is out of range; it must be {rng}")
    steps = cfg.get("steps")
    if steps is not None and not all(isinstance(s, int) and 1 <= s <= MAX_STEPS for s in (steps if isinstance(steps, ListConfig) else [steps])):
        raise ValueError(f"steps={steps} is out of range; it must be an integer in [1, {MAX_STEPS}] (or, for eval, a list of them)")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_config(value) and value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed; choose from: {', '.join(map(str, allowed))}")
    for key in IMAGE_INPUTS:  # test indices or a path: never a bool (True would index as 1) or a mapping
        value = OmegaConf.select(cfg, key, default=None)
        items = list(value) if isinstance(value, ListConfig) else [value]
        if value is not None and (isinstance(value, (bool, DictConfig)) or not all(_index_or_path(v) for v in items)
                                  or (isinstance(value, ListConfig) and not all(isinstance(v, int) for v in items))):
            raise ValueError(f"{key}={value!r}: give a test-split index, a list of them, or a path to an image (or a folder)")
    device = cfg.get("device")
    if device is not None and not (device in ("auto", "cpu", "cuda", "mps") or str(device).startswith("cuda:")):
        raise ValueError(f"device={device!r} is not allowed; choose from: auto, cpu, cuda, cuda:N, mps")


def check_streaming(cfg: DictConfig, data) -> None:
    """What a training split streamed from its files (``dataset.in_memory``) cannot serve: the runs that read the whole split."""
    from .errors import UsageError

    if not data.streamed:
        return
    needs = ("latent.autoencoder (the split is encoded to latents once, in memory)" if cfg.latent.autoencoder else None)
    needs = needs or ("dataset.controls (the control images are held in memory)" if data.train_controls is not None else None)
    needs = needs or ("task=autoencoder (its snapshots measure the whole split)" if cfg.task == "autoencoder" else None)
    if needs:
        raise UsageError(f"dataset.in_memory=false streams the training images, which {needs} does not support: set dataset.in_memory=true "
                         f"(and dataset.limit=N to hold fewer)")


def check_training(cfg: DictConfig, data, device, precision: str, world: int, pixels=None) -> None:
    """What a training run needs of its dataset, device and processes (raises UsageError): labels for a
    classifier or a class-conditional model, in the model's number of classes; fp16 only on CUDA; a global
    batch that the torchrun processes share evenly."""
    from .errors import UsageError

    if cfg.task == "classifier":
        if cfg.model.num_classes:
            raise UsageError("task=classifier trains a noise-aware classifier of the dataset's classes: drop model.num_classes")
        if data.train_labels is None:
            raise UsageError(f"task=classifier needs a labelled dataset; dataset={data.name} has no labels (use digits, gmm or digits_gmm)")
    elif cfg.task == "autoencoder":
        ae = cfg.autoencoder
        if len(data.shape) != 3:
            raise UsageError(f"task=autoencoder compresses images; dataset={data.name} has items of shape {list(data.shape)}")
        if ae.downsample not in (1, 2, 4, 8) or data.shape[1] % ae.downsample or data.shape[2] % ae.downsample:
            raise UsageError(f"autoencoder.downsample={ae.downsample}: choose 1, 2, 4 or 8 dividing the images' "
                             f"{data.shape[1]}x{data.shape[2]} (mnist 28x28: 4 gives 7x7 latents)")
    elif cfg.model.num_classes and (data.train_labels is None or cfg.model.num_classes != data.num_classes):
        have = f"{data.num_classes} classes" if data.train_labels is not None else "no labels"
        raise UsageError(f"model.num_classes={cfg.model.num_classes}, but dataset={data.name} has {have}; "
                         f"use model.num_classes={data.num_classes if data.train_labels is not None else 0}")
    if cfg.task == "superres":
        f, images = cfg.superres.factor, pixels if pixels is not None else data  # a latent run: the low-resolution image is of the pixels
        if len(images.shape) != 3:
            raise UsageError(f"task=superres upsamples images; dataset={images.name} has items of shape {list(images.shape)}")
        if images.shape[1] % f or images.shape[2] % f:
            raise UsageError(f"superres.factor={f} does not divide the images' {images.shape[1]}x{images.shape[2]}")
        if cfg.model.arch != "unet" or cfg.model.num_classes:
            raise UsageError("task=superres concatenates the low-resolution image to a unet's input: use model.arch=unet, without model.num_classes")
    cond = cfg.get("cond")
    if cond is not None and cond.name != "none":
        if cfg.task != "diffusion":
            raise UsageError(f"cond={cond.name} conditions a diffusion model; task={cfg.task} does not use it")
        if cfg.model.num_classes:
            raise UsageError(f"cond={cond.name} and model.num_classes both condition on the labels: keep one (cond=class reads them through "
                             "cross-attention, model.num_classes adds them to the time embedding)")
        if cfg.model.arch != "unet":
            raise UsageError(f"cond={cond.name} reads its condition through cross-attention, which model.arch=unet has; model.arch={cfg.model.arch} has not")
        if data.train_labels is None and (cond.name == "class" or data.train_captions is None):
            raise UsageError(f"cond={cond.name} needs a labelled dataset (captions are templated from the labels)"
                             + ("" if cond.name == "class" else " or captions (dataset=folder dataset.captions=<metadata.jsonl>)")
                             + f"; dataset={data.name} has neither")
        from .prompting import DEFAULT_CONTEXT_DIM

        width = cfg.model.get("context_dim") or DEFAULT_CONTEXT_DIM
        if cond.name == "text" and width % cond.heads:
            raise UsageError(f"cond.heads={cond.heads} must divide the text encoder's width model.context_dim={width}")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("trainer.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    tc = cfg.trainer
    if tc.eval_every and tc.log_every and tc.eval_every % tc.log_every:
        raise UsageError(f"trainer.eval_every={tc.eval_every}: the held-out loss is written with the log lines, so it must be a multiple "
                         f"of trainer.log_every={tc.log_every} (or 0 to disable it; with log_every=0 it is taken at the last step only)")
    if tc.batch_size % world:
        raise UsageError(f"trainer.batch_size={tc.batch_size} is the global batch: it must be divisible by the {world} processes")
    if tc.accumulate > tc.batch_size // world:
        raise UsageError(f"trainer.accumulate={tc.accumulate}: each process's batch of {tc.batch_size // world} cannot make that many micro-batches")
