"""``diffctl export``: a trained checkpoint's weights for use outside diffctl (and by diffctl again:
``ckpt=<export folder>``).

``format=safetensors``: ``model.safetensors`` plus ``diffctl.json``, the config that rebuilds the network.
``format=diffusers``: a diffusers ``DDPMPipeline`` folder (``unet/``, ``scheduler/`` with the schedule's
betas written out, ``model_index.json``) of a ``model=diffusers_unet`` run, plus the same ``diffctl.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from .errors import UsageError
from .io.checkpoint import EXPORT_CONFIG, TRAINED, load_checkpoint, require, save_export
from .io.rundir import resolve_checkpoint

log = logging.getLogger("diffctl.export")


def run_export(cfg: DictConfig, run_dir: Path) -> dict:
    ckpt = resolve_checkpoint(cfg.ckpt, Path(cfg.paths.output_root))
    state = load_checkpoint(ckpt)
    require(state, ckpt, TRAINED)
    written = []
    if cfg.format == "diffusers":
        import torch

        from .models.diffusers_unet import save_pipeline_folder
        from .runtime import load_trained

        model = state["config"].get("model", {})
        if model.get("arch") != "diffusers_unet":
            raise UsageError(f"format=diffusers writes a diffusers UNet2DModel: train with model=diffusers_unet; {ckpt} is a "
                             f"model.arch={model.get('arch')} run")
        if model.get("sigma_data", 1.0) != 1.0:
            raise UsageError(f"format=diffusers: diffusers' schedulers feed the network unscaled inputs (sigma_data=1); {ckpt} was "
                             f"trained with model.sigma_data={model.get('sigma_data')}")
        from .data import load_dataset

        trained = load_trained(ckpt, torch.device("cpu"), ema=cfg.ema)
        clip = load_dataset(trained.cfg.dataset).levels is not None  # as diffctl's samplers do by default (sampler.clip=null)
        try:
            save_pipeline_folder(run_dir, trained.net, trained.alpha_bar, trained.cfg.model.prediction, clip)
        except OSError as e:
            raise UsageError(f"diffctl export: could not write the diffusers folder {run_dir}: {e.strerror or e} (disk full or quota?)") from None
        written = [run_dir / "unet", run_dir / "scheduler", run_dir / "model_index.json"]
    written += save_export(run_dir, state, cfg.ema, weights_elsewhere=" (unet/)" if written else "")
    log.info("exported %s (step %d, %s weights) as %s; sample it with: diffctl sample ckpt=%s", ckpt, state["step"],
             "EMA" if cfg.ema and state.get("ema") is not None else "raw", ", ".join(p.name for p in written), run_dir)
    return {"checkpoint": str(ckpt), "files": [str(p) for p in written], "config": str(run_dir / EXPORT_CONFIG)}
