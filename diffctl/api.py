"""diffctl from Python (a notebook, a script): the same code as the command line.

    import diffctl
    folder = diffctl.train(["model=unet_tiny", "trainer.steps=200"])   # runs `diffctl train ...`, returns the run folder
    run = diffctl.load(folder)                  # a run folder, a checkpoint file, "latest", or "oracle" with dataset=
    x = run.sample(16, sampler="unipc", steps=10, classes=None, seed=0)  # [16, C, H, W] in [-1, 1]
    run.denoiser(x_noisy, sigma)                # D(x, sigma) -> x0_hat, the one preconditioned denoiser
    run.config                                  # the training run's resolved config
    diffctl.schedules.get("cosine", 1000)       # alpha_bar [T] of a registered schedule
    diffctl.evaluate(folder, metrics=["test_loss"])  # runs `diffctl eval ...`, returns its metrics.json as a dict

Every request is composed and validated as the CLI does it (Hydra configs, the same one-line errors,
raised here as ``diffctl.errors.UsageError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig

from .errors import UsageError


def _compose(command: str, overrides: Sequence[str]) -> DictConfig:
    """A command's config as the CLI composes it, validated."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from .config import register_schemas
    from .overrides import quote_overrides
    from .validation import validate

    GlobalHydra.instance().clear()
    register_schemas()
    _check_overrides(overrides)
    try:
        with initialize_config_module("diffctl.configs", version_base="1.3"):
            cfg = compose(command, overrides=quote_overrides(list(overrides)))
        validate(cfg)
    except Exception as e:  # Hydra's and OmegaConf's errors, our ValueErrors: one line, as the CLI prints it
        from .cli import _one_line

        raise UsageError(_one_line(e)) from None
    return cfg


def _check_overrides(overrides) -> None:
    """Overrides are strings ``key=value``, given as a list (a lone string would be read character by character)."""
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise UsageError(f"overrides must be a list of strings such as ['trainer.steps=100']; got {overrides!r:.80}")


def _value(v) -> str:
    """A Python value as a Hydra override value."""
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str) and not v.replace("_", "").isalnum():  # spaces, quotes, punctuation: a quoted string
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "null" if v is None else str(v)


SOURCE_KEYS = ("ckpt", "ema", "device", "dataset", "schedule", "paths")  # the sample options that choose the model itself


def _listed(overrides) -> list:
    _check_overrides(overrides)
    return list(overrides)


class Run:
    """A trained model (or the exact oracle) to sample from and look into; made by ``diffctl.load``."""

    def __init__(self, ckpt: str, overrides: Sequence[str], device: str):
        _check_overrides(overrides)
        self._base = [f"ckpt={_value(ckpt)}", f"device={device}", *overrides]
        self._sources = {}
        self.device, self.source = self._source(_compose("sample", self._base))

    @staticmethod
    def _loads(cfg: DictConfig) -> str:
        """What decides the model a sample config loads (checkpoint, weights, device, the oracle's data, the output root)."""
        from omegaconf import OmegaConf

        return repr([OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg.get(k)) else cfg.get(k) for k in SOURCE_KEYS])

    def _source(self, cfg: DictConfig):
        """(device, source) of ``cfg``: the run's own, or the one its overrides ask for (``ckpt=``, ``ema=false``, ...),
        loaded once."""
        from .runtime import load_source, resolve_device

        key = self._loads(cfg)
        if key not in self._sources:
            device = resolve_device(cfg.device)
            self._sources[key] = device, load_source(cfg, device)
        return self._sources[key]

    @property
    def denoiser(self):
        """D(x, sigma, cond=None) -> x0_hat in the scaled variable x = x0 + sigma eps (``core.diffusion.Denoiser``)."""
        return self.source.denoise

    @property
    def alpha_bar(self) -> torch.Tensor:
        return self.source.alpha_bar

    @property
    def data(self):
        """The dataset the model was trained on (``diffctl.data.Dataset``: train / test tensors, shape, levels, labels)."""
        return self.source.data

    @property
    def checkpoint(self) -> Optional[Path]:
        return Path(self.source.info["checkpoint"]) if "checkpoint" in self.source.info else None

    @property
    def step(self) -> Optional[int]:
        return self.source.info.get("checkpoint_step")

    @property
    def config(self) -> Optional[DictConfig]:
        """The training run's resolved config (None for the oracle)."""
        if self.checkpoint is None:
            return None
        from .io.checkpoint import inert_config, load_checkpoint

        return inert_config(load_checkpoint(self.checkpoint)["config"])

    def sample(self, n: int = 16, *, sampler: str = "ddim", steps: int = 50, classes=None, prompts=None, guidance: float = 1.0, seed: int = 0,
               batch_size: int = 256, overrides: Sequence[str] = ()) -> torch.Tensor:
        """``n`` samples ``[n, ...]`` (float32, CPU; a latent model's decoded to pixels), as ``diffctl sample`` makes them: image i's
        noise depends only on seed + i, so it is the same image in any batch, up to float rounding (about 1e-6: a batch's
        shape changes the order of the network's float sums).

        ``classes``: ``"all"``, a class or a list of them (a class-conditional model, or with
        ``overrides=["guidance.classifier=<run>"]``); ``prompts``: a text-conditioned model's prompt, a list of them
        (cycled over the images), or ``"train"`` / ``"heldout"``; ``guidance``: classifier-free guidance scale w;
        ``overrides``: any other sample option, e.g. ``["sampler.spacing=karras", "sampler.eta=1"]``.
        """
        from .steering import generate_from_config, pixels_of

        cfg = _compose("sample", [*self._base, f"sampler={sampler}", f"steps={steps}", f"num_samples={n}", f"seed={seed}",
                                  f"batch_size={batch_size}", f"classes={_value(classes)}", f"guidance.scale={guidance}",
                                  *([f"prompts={_value(prompts)}" if prompts in ("train", "heldout") or not isinstance(prompts, str)
                                     else f"prompt={_value(prompts)}"] if prompts is not None else []), *_listed(overrides)])
        device, source = self._source(cfg)  # overrides such as ckpt= or ema=false sample another model than this Run's
        return pixels_of(source, generate_from_config(source, cfg, device, cfg.steps))  # a latent model's decoded, as diffctl sample's

    def __repr__(self) -> str:
        return f"Run({self.source.describe()})"


def load(what: str | Path = "latest", *, ema: bool = True, device: str = "auto", overrides: Sequence[str] = ()) -> Run:
    """A run folder, a checkpoint file, ``"latest"`` (under ``paths.output_root`` / $DIFFCTL_OUTPUT_ROOT), or
    ``"oracle"`` with ``overrides=["dataset=gmm"]``: the exact denoiser of a Gaussian mixture."""
    return Run(str(what), [f"ema={_value(ema)}", *overrides], device)


def _run(command: str, args: Sequence[str]) -> Path:
    """Run ``diffctl <command> <args>`` in this process (the CLI's Hydra application: run folder, config, logs) and return
    its run folder (the last one of a ``-m`` sweep)."""
    from .cli import LAST_RUNS, run_command

    LAST_RUNS.clear()
    code = run_command(command, _listed(args))
    if code or not LAST_RUNS:
        raise UsageError(f"diffctl {command} {' '.join(args)} failed (exit {code}); its message is above")
    return LAST_RUNS[-1]


def train(overrides: Sequence[str] = ()) -> Path:
    """Run ``diffctl train <overrides>`` in this process and return its run folder (the last one of a ``-m`` sweep)."""
    return _run("train", overrides)


def evaluate(ckpt: str | Path = "latest", *, metrics: Optional[Sequence[str]] = None, overrides: Sequence[str] = ()) -> dict:
    """Run ``diffctl eval ckpt=<ckpt> [metrics=[...]] <overrides>`` in this process and return its report (``metrics.json``:
    each metric's value with its error bar and real-vs-real floor, the sampler, the checkpoint, the run folder)."""
    import json

    args = [f"ckpt={_value(str(ckpt))}", *([f"metrics={_value(list(metrics))}"] if metrics is not None else []), *overrides]
    folder = _run("eval", args)
    return {**json.loads((folder / "metrics.json").read_text()), "run_folder": str(folder)}


class schedules:
    """``diffctl.schedules.get(name, timesteps, **constants)``: alpha_bar ``[T]`` (float64) of a registered schedule."""

    @staticmethod
    def get(name: str, timesteps: int = 1000, zero_terminal_snr: bool = False, **constants) -> torch.Tensor:
        from .core.schedules import SCHEDULES, make_alpha_bar
        from .validation import UPPER

        if name not in SCHEDULES.names():
            raise UsageError(f"unknown schedule {name!r}; choose from: {', '.join(SCHEDULES.names())}")
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or not 2 <= timesteps <= UPPER["schedule.timesteps"]:
            raise UsageError(f"timesteps={timesteps!r}: give an integer in [2, {UPPER['schedule.timesteps']}]")
        try:
            return make_alpha_bar(name, timesteps, zero_terminal_snr, **constants)
        except (TypeError, ValueError) as e:
            raise UsageError(f"schedule {name!r}: {e}") from None

    @staticmethod
    def names() -> tuple:
        from .core.schedules import SCHEDULES

        return SCHEDULES.names()
