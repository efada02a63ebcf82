"""Device and precision choices, and rebuilding a trained model from its checkpoint."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .core.diffusion import Denoiser, NoisyClassifier
from .core.schedules import SCHEDULES, make_alpha_bar
from .errors import UsageError
from .io.checkpoint import load_checkpoint

log = logging.getLogger("diffctl.runtime")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; an unavailable device is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device computes it natively, else fp16 on CUDA (with a GradScaler), else fp32.

    A CPU without AVX-512 or AMX (an AVX2-only AMD EPYC, say) has no fast bf16 kernels: oneDNN falls back to
    converting each operand, and a tiny UNet's training step ran 8.5x slower in bf16 than in fp32 there."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 or AMX on x86, bf16 on Arm), as torch decides."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


def autocast(device: torch.device, precision: str):
    """The ``torch.autocast`` context for a precision name (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


COMPILE_MODES = ("false", "true", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value) -> str | None:
    """torch.compile's mode for ``trainer.compile`` (None: not compiled); true means torch's default mode."""
    value = str(value).lower()
    if value not in COMPILE_MODES:
        raise UsageError(f"trainer.compile={value}: choose from {', '.join(COMPILE_MODES)}")
    return None if value == "false" else "default" if value == "true" else value


def schedule_alpha_bar(schedule_cfg: DictConfig) -> torch.Tensor:
    """alpha_bar ``[T]`` (float64) of a ``schedule`` config group."""
    return make_alpha_bar(schedule_cfg.name, schedule_cfg.timesteps, schedule_cfg.zero_terminal_snr, **SCHEDULES.values(schedule_cfg))


@dataclass
class Trained:
    """What sampling and evaluation need from a training run."""

    net: torch.nn.Module
    cfg: DictConfig  # the training run's resolved config
    alpha_bar: torch.Tensor  # float64 [T]
    step: int
    data_shape: tuple
    num_classes: int  # classes of the dataset it was trained on (0: unlabelled)
    latent: Optional[dict] = None  # a latent model: the autoencoder it decodes through (diffctl.latent.LatentSpace.record)
    cond: Optional[object] = None  # a model conditioned through cross-attention: its diffctl.prompting.Cond


def load_trained(path: Path, device: torch.device, ema: bool = True, task: str = "diffusion") -> Trained:
    """Rebuild model and schedule from the config stored in the checkpoint at ``path``; it must be a
    run of ``task`` (a diffusion model, or a noise-aware classifier).  What the file says is data: its
    config is never resolved, its values are range-checked, the model is sized on the meta device and
    matched against the stored weights before any memory is allocated, and non-finite weights are
    refused (they would sample blank images)."""
    from omegaconf.errors import OmegaConfBaseException

    from .config import option_schema
    from .io.checkpoint import TRAINED, inert_config, require
    from .models.sizing import check_matches
    from .prompting import build_network, condition_of
    from .validation import check_values

    state = load_checkpoint(path)
    require(state, path, TRAINED)
    try:
        cfg = inert_config(state["config"])
        check_values(cfg)
        cfg.model = OmegaConf.merge(OmegaConf.structured(option_schema("model", cfg.model.arch)), cfg.model)  # options added since: defaults
        found = cfg.get("task", "diffusion")  # checkpoints from before classifiers lack the key
        if found in ("superres", "controlnet") and task == "diffusion":
            found = task  # super-resolution and ControlNet models sample as any diffusion model does, given their images
        if found != task:
            what = {"classifier": f"{path} is a noise-aware classifier (task=classifier): use it as guidance.classifier={path}",
                    "autoencoder": f"{path} is an autoencoder (task=autoencoder): it encodes and decodes images, it does not sample"}
            raise UsageError(what[found] if task == "diffusion" and found in what else
                             f"guidance.classifier={path} is {'an autoencoder' if found == 'autoencoder' else 'a diffusion model'}, not a classifier: "
                             "train one with 'diffctl train task=classifier'")
        data_shape = tuple(state["data_shape"])
        classify = state["num_classes"] if task == "classifier" else 0
        key = "ema" if ema and state.get("ema") is not None else "model"
        cond = condition_of(cfg, data_shape, record=state.get("cond")) if task == "diffusion" else None
        check_matches(lambda: build_network(cfg.model, data_shape, cond, classify, pretrained=False), state[key], str(path))
        alpha_bar = schedule_alpha_bar(cfg.schedule)
        net = build_network(cfg.model, data_shape, cond, classify, pretrained=False)
    except (OmegaConfBaseException, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{path}: malformed diffctl checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    net.load_state_dict(state[key])
    bad = next((k for k, v in state[key].items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UsageError(f"{path}: its {'EMA ' if key == 'ema' else ''}weights are not finite ({bad} holds NaN or inf); "
                         f"it cannot sample: use an earlier checkpoint of that run")
    return Trained(net=net.to(device).eval(), cfg=cfg, alpha_bar=alpha_bar, step=int(state["step"]),
                   data_shape=data_shape, num_classes=int(state.get("num_classes", 0)), latent=state.get("latent"), cond=cond)


@dataclass
class Source:
    """What ``sample`` and ``eval`` draw from: a trained checkpoint or a closed-form oracle."""

    denoise: Callable  # D(x, sigma) -> x0_hat
    alpha_bar: torch.Tensor  # float64 [T]: the noise levels samplers space their steps on
    data: object  # diffctl.data.Dataset the model was trained on (or whose oracle it is)
    info: dict  # provenance written into sample.json / metrics.json
    net: Optional[torch.nn.Module] = None  # the network (None for the oracle)
    prediction: str = "x0"
    num_classes: int = 0  # > 0: denoise(x, sigma, y) takes class labels; label num_classes is the null label
    latent: Optional[object] = None  # a latent model: its diffctl.latent.LatentSpace (``data`` is then the dataset's latents)
    pixels: Optional[object] = None  # a latent model: the dataset in pixels
    cond: Optional[object] = None  # a model conditioned through cross-attention (cond=class|text|clip): its diffctl.prompting.Cond

    @property
    def null(self) -> Optional[torch.Tensor]:
        """The network's null condition (classifier-free guidance), or None for a network that takes no condition."""
        if self.cond is not None:
            return self.cond.null
        return torch.tensor(self.num_classes) if self.num_classes else None

    @property
    def decode(self) -> Optional[Callable]:
        """Latents -> pixels for a latent model; None otherwise."""
        return self.latent.decode if self.latent is not None else None

    def label(self) -> str:
        """A picture's short name for the model: ``<run folder>/<checkpoint> (step N)``, or the oracle."""
        if "checkpoint" not in self.info:
            return f"oracle of {self.info['dataset']}"
        path = Path(self.info["checkpoint"])
        folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return f"{folder.parent.name}/{folder.name}/{path.name} (step {self.info['checkpoint_step']})"

    def describe(self) -> str:
        if self.info.get("format") == "diffusers":
            return f"the diffusers folder {self.info['checkpoint']} (step {self.info['checkpoint_step']})"
        if "checkpoint" in self.info:
            return f"{self.info['checkpoint']} (step {self.info['checkpoint_step']}, {'EMA' if self.info['ema'] else 'raw'} weights)"
        return f"the exact denoiser of dataset={self.info['dataset']} on schedule {self.info['schedule']}"


def load_source(cfg: DictConfig, device: torch.device) -> Source:
    """``ckpt=oracle dataset=...`` -> the exact denoiser of a Gaussian mixture; otherwise ``ckpt=`` -> the trained model."""
    from .config import load_option
    from .data import load_dataset
    from .io.rundir import resolve_checkpoint

    if cfg.ckpt == "oracle":
        if cfg.get("dataset") is None:
            raise UsageError("ckpt=oracle needs dataset=gmm or dataset=digits_gmm or dataset=gmm1d")
        data = load_dataset(cfg.dataset)
        if data.oracle is None:
            raise UsageError(f"ckpt=oracle: dataset={data.name} has no closed-form denoiser; use dataset=gmm, gmm1d or digits_gmm")
        schedule = cfg.schedule if cfg.get("schedule") is not None else load_option("schedule", "linear")
        return Source(data.oracle, schedule_alpha_bar(schedule), data, {"model": "oracle", "dataset": data.name, "schedule": schedule.name},
                      num_classes=data.oracle.num_classes)
    from .models.diffusers_unet import is_pipeline_folder

    if is_pipeline_folder(Path(str(cfg.ckpt)).expanduser()):
        return _diffusers_source(cfg, Path(str(cfg.ckpt)).expanduser(), device)
    if cfg.get("dataset") is not None or cfg.get("schedule") is not None:
        raise UsageError("dataset= and schedule= apply to ckpt=oracle only (and dataset= to a diffusers folder); a checkpoint brings its own")
    ckpt = resolve_checkpoint(cfg.ckpt, Path(cfg.paths.output_root))
    trained = load_trained(ckpt, device, ema=cfg.ema)
    data = load_dataset(trained.cfg.dataset)
    space = pixels = None
    if trained.latent is not None:
        from .latent import latent_dataset, space_of

        space, pixels = space_of(trained.latent, device), data
        data = latent_dataset(space, data, Path(cfg.paths.cache_dir))
    if tuple(data.shape) != trained.data_shape:
        raise UsageError(f"{ckpt}: malformed diffctl checkpoint (data_shape {list(trained.data_shape)}, but its dataset={data.name} "
                         f"has items of shape {list(data.shape)})")
    model = trained.cfg.model
    return Source(Denoiser(trained.net, trained.alpha_bar.to(device), model.prediction, model.sigma_data), trained.alpha_bar, data,
                  {"checkpoint": str(ckpt), "checkpoint_step": trained.step, "ema": cfg.ema,
                   **({"latent": trained.latent} if space is not None else {})}, trained.net, model.prediction,
                  model.num_classes or getattr(trained.cond, "num_classes", 0), space, pixels, trained.cond)


def _diffusers_source(cfg: DictConfig, folder: Path, device: torch.device) -> Source:
    """A diffusers pipeline folder: its UNet2DModel, scheduler and prediction type; the data it models comes from
    ``dataset=``, or from the diffctl.json of a diffctl export, and sampling alone needs none (8-bit pixels assumed)."""
    from .data import Dataset, load_dataset
    from .io.checkpoint import EXPORT_CONFIG, inert_config, read_export_record
    from .models.diffusers_unet import load_pipeline_folder
    from .validation import check_values

    if cfg.get("schedule") is not None:
        raise UsageError("schedule= applies to ckpt=oracle only; a diffusers folder brings its scheduler")
    record = read_export_record(folder) if (folder / EXPORT_CONFIG).exists() else {}
    net, alpha_bar, prediction = load_pipeline_folder(folder)
    unet = net.unet.config
    shape = (unet.in_channels, unet.sample_size, unet.sample_size)
    if cfg.get("dataset") is not None:
        data = load_dataset(cfg.dataset)
    elif isinstance(record.get("config"), dict) and isinstance(record["config"].get("dataset"), dict):
        recorded = inert_config({"dataset": record["config"]["dataset"]})
        try:
            check_values(recorded)
        except ValueError as e:
            raise UsageError(f"{folder / EXPORT_CONFIG}: malformed export record ({e})") from None
        data = load_dataset(recorded.dataset)
    elif cfg.get("metrics") is not None:
        raise UsageError(f"ckpt={folder}: a diffusers folder does not say what data it models; eval needs dataset=<that data>")
    else:
        empty = torch.zeros((0, *shape))
        data = Dataset(name="unknown (diffusers folder)", train=empty, test=empty, levels=256)
    if tuple(data.shape) != shape:
        raise UsageError(f"ckpt={folder}: its UNet makes {list(shape)} images; dataset={data.name} has items of shape {list(data.shape)}")
    return Source(Denoiser(net.to(device), alpha_bar.to(device), prediction), alpha_bar, data,
                  {"checkpoint": str(folder), "checkpoint_step": record.get("step"), "ema": str(record.get("weights", "")).startswith("ema"),
                   "format": "diffusers"}, net, prediction, net.num_classes)


@dataclass
class Classifier:
    """A noise-aware classifier for classifier guidance: ``log_prob(x, sigma)`` -> log p(y | x, sigma) ``[N, K]``."""

    log_prob: Callable
    num_classes: int
    info: dict


def load_classifier(spec: str, cfg: DictConfig, source: Source, device: torch.device) -> Classifier:
    """``guidance.classifier=``: a ``task=classifier`` checkpoint, run folder or ``latest``; or ``oracle``,
    the exact posterior over the components of a ``ckpt=oracle`` mixture."""
    from .io.rundir import resolve_checkpoint

    if spec == "oracle":
        if source.net is not None or source.data.oracle is None:
            raise UsageError("guidance.classifier=oracle is the exact posterior of a mixture: use it with ckpt=oracle dataset=gmm|gmm1d|digits_gmm")
        return Classifier(source.data.oracle.log_posterior, source.data.oracle.num_classes, {"classifier": "oracle"})
    path = resolve_checkpoint(spec, Path(cfg.paths.output_root), key="guidance.classifier", tasks=("classifier",))
    trained = load_trained(path, device, ema=cfg.ema, task="classifier")
    data = source.data
    if trained.data_shape != data.shape or trained.num_classes != data.num_classes:
        raise UsageError(f"guidance.classifier={spec}: it classifies {trained.num_classes} classes of {list(trained.data_shape)} data "
                         f"(dataset={trained.cfg.dataset.name}); this model makes {list(data.shape)} data of dataset={data.name}")
    if trained.cfg.dataset.name != data.name:
        log.warning("guidance.classifier was trained on dataset=%s, the model on dataset=%s", trained.cfg.dataset.name, data.name)
    return Classifier(NoisyClassifier(trained.net, trained.alpha_bar.to(device), trained.cfg.model.sigma_data), trained.num_classes,
                      {"classifier": str(path), "classifier_step": trained.step})


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (world 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launched: bool = False  # by torchrun: a process group and DDP, also for one process (the NCCL / gloo path, tested at world 1)

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or a single process."""
    import os

    return Distributed(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)),
                       "RANK" in os.environ and "MASTER_ADDR" in os.environ)


def init_distributed(dist_info: Distributed, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this rank's device."""
    import torch.distributed as dist

    if not dist_info.launched:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def fast_math(device: torch.device, tf32: bool) -> None:
    """TF32 matmuls and convolutions on CUDA (Ampere and later): ~2x faster fp32 at ~1e-3 relative precision."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def apply_threads(threads: int | None) -> str:
    """Set torch's CPU threads to ``threads=``; unset, torch keeps its default (one per core), except in a sweep whose
    launcher runs jobs side by side (joblib's ``n_jobs``), where each job gets its share of the cores so that they do
    not oversubscribe them.  Returns the run log's line saying what was chosen and why."""
    import os

    why = f"threads={threads}"
    if threads is None:
        jobs = _parallel_jobs()
        if jobs > 1:
            threads, why = max(1, (os.cpu_count() or 1) // jobs), f"the {os.cpu_count()} cores shared by {jobs} parallel sweep jobs"
    if threads:
        torch.set_num_threads(threads)
    else:
        why = "torch's default; set threads=N when other work shares the machine"
    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''} ({why})"


def _parallel_jobs() -> int:
    """How many jobs a Hydra sweep runs at once beside this one (joblib's ``n_jobs``; 1 outside such a sweep)."""
    import os

    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):  # not inside a Hydra job
        return 1
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return (os.cpu_count() or 1) if n < 0 else n
