"""``diffctl sample``: load a checkpoint (or oracle), generate as the config asks, write the files."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from .generation import grid_layout
from .io.images import save_inpaint_grid, save_samples
from .io.rundir import write_json
from .runtime import load_source, resolve_device
from .steering import describe_guidance, generate_from_config, pixels_of

log = logging.getLogger("diffctl.sample")


def run_sample(cfg: DictConfig, run_dir: Path) -> dict:
    """``diffctl sample``: load the checkpoint (or oracle), generate, write grid.png, samples.npz, sample.json
    (and inpaint.png when inpainting)."""
    device = resolve_device(cfg.device)
    source = load_source(cfg, device)
    log.info("sampling from %s", source.describe())
    gen = generate_from_config(source, cfg, device, cfg.steps)
    samples, info, data = pixels_of(source, gen), gen.record(), source.data
    cond = gen.conditioning
    log.info("visited timesteps: %s", gen.timesteps)
    title = f"{source.label()}: {gen.sampler}, {cfg.steps} steps, NFE {gen.nfe}" + (f", {describe_guidance(gen.guidance)}" if gen.guidance else "")
    layout = grid_layout(gen.labels, gen.prompts, title)
    files = save_samples(samples, run_dir, reference=data.test if not data.is_image else None, title=layout.pop("title"), layout=layout)
    if data.shape == (1,) and source.decode is None:  # 1-D data: reverse trajectories over the forward density (diffctl.io.plots1d)
        from .trajectories import save_sample_picture_1d

        files.update(save_sample_picture_1d(source, cfg, device, samples, run_dir / "trajectories.png", cond))
    if cond is not None and cond.known is not None:
        known, keep = cond.pixels or (cond.known, cond.mask)
        files["inpaint_grid"] = str(save_inpaint_grid(known, keep, samples, run_dir / "inpaint.png"))
        info["inpaint"] = {"image": cfg.inpaint.image, "mask": cfg.inpaint.mask, "resample": cond.resample}
        kept = (samples - known).abs().mul(keep).amax().item()
        log.info("inpainting: known pixels changed by at most %.2g; grid: input | masked input | results", kept)
    if cond is not None and cond.superres is not None:
        from .metrics.image_quality import superres_scores
        from .superres import save_superres_grid

        lows, reals, names = cond.superres
        files["superres_grid"] = str(save_superres_grid(lows, reals, samples, source.cond.factor, run_dir / "superres.png"))
        info["superres"] = {"inputs": names, **superres_scores(samples, lows, reals, source.cond.factor)}
        log.info("super-resolution: %s; grid: low-res | bicubic | samples | real",
                 ", ".join(f"{k} {v:.4g}" for k, v in info["superres"].items() if k != "inputs"))
    if cond is not None and cond.control is not None:
        from .control import fidelity, save_control_grid

        controls, reals, names = cond.control
        files["control_grid"] = str(save_control_grid(controls, reals, samples, run_dir / "control.png"))
        score = fidelity(source.cond.kind, samples, controls[torch.arange(len(samples)) % len(controls)]).mean().item()
        info["control"] = {"inputs": names, "kind": source.cond.kind, "scale": float(cfg.control.scale), "fidelity": score}
        log.info("ControlNet: %s fidelity %.4g at control.scale=%g; grid: control | samples | real", source.cond.kind, score, cfg.control.scale)
    if gen.prompts is not None:
        log.info("%d prompts (%s) with %s", len(set(gen.prompts)), "of classes " + str(sorted(set(gen.labels.tolist()))) if gen.labels is not None
                 else "not captions of known classes", describe_guidance(gen.guidance))
    elif gen.labels is not None:
        log.info("classes %s with %s", sorted(set(gen.labels.tolist())), describe_guidance(gen.guidance))
    record = {**info, "num_samples": cfg.num_samples, "seed": cfg.seed, "seconds": round(gen.seconds, 3), **source.info, **files}
    write_json(run_dir / "sample.json", record)
    log.info("%d samples in %.1fs (%s, %d steps, NFE %d%s)", cfg.num_samples, gen.seconds, gen.sampler, cfg.steps, gen.nfe,
             f" + {gen.classifier_nfe} classifier gradients" if gen.classifier_nfe else "")
    return record
