"""``diffctl export``: a trained checkpoint's weights as safetensors plus the JSON config that rebuilds the
network, for use outside diffctl (and by diffctl again: ``ckpt=<export folder>``)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from .io.checkpoint import TRAINED, load_checkpoint, require, save_export
from .io.rundir import resolve_checkpoint

log = logging.getLogger("diffctl.export")


def run_export(cfg: DictConfig, run_dir: Path) -> dict:
    ckpt = resolve_checkpoint(cfg.ckpt, Path(cfg.paths.output_root))
    state = load_checkpoint(ckpt)
    require(state, ckpt, TRAINED)
    weights, meta = save_export(run_dir, state, cfg.ema)
    log.info("exported %s (step %d, %s weights) as %s and %s; sample it with: diffctl sample ckpt=%s", ckpt, state["step"],
             "EMA" if cfg.ema and state.get("ema") is not None else "raw", weights.name, meta.name, run_dir)
    return {"checkpoint": str(ckpt), "weights": str(weights), "config": str(meta)}
