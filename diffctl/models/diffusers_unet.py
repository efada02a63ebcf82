"""A model built on diffusers' ``UNet2DModel`` (``model=diffusers_unet``; pip install 'diffctl[diffusers]'), so
that a diffctl run can be written as a diffusers pipeline folder (``diffctl export format=diffusers``) and a
diffusers model folder can be sampled and scored by diffctl (``ckpt=<folder>``)."""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from ..errors import UsageError


def unet2d():
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise UsageError("model=diffusers_unet and diffusers folders need the diffusers package: pip install 'diffctl[diffusers]'") from None
    return UNet2DModel


class DiffusersUNet(nn.Module):
    """``(x [N, C, H, W], t [N], labels [N] or None) -> [N, C, H, W]`` through a ``diffusers.UNet2DModel``;
    ``attention[i]`` puts self-attention in level i; ``num_classes`` > 0 adds a class embedding whose label
    ``num_classes`` (also ``labels=None``) is the null label of classifier-free guidance."""

    def __init__(self, data_shape: Sequence[int], classify: int = 0, *, block_out_channels: List[int] = (32, 64),
                 attention: List[bool] = (False, True), layers_per_block: int = 1, norm_num_groups: int = 8, num_classes: int = 0):
        super().__init__()
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"model arch 'diffusers_unet' needs square images [C, H, H]; this dataset is {list(data_shape)}")
        if classify:
            raise ValueError("model arch 'diffusers_unet' has no classifier form: train task=classifier with a unet model")
        if len(attention) != len(block_out_channels):
            raise ValueError(f"model.attention has {len(attention)} entries; model.block_out_channels has {len(block_out_channels)} levels")
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        self.num_classes = num_classes
        self.unet = unet2d()(sample_size=data_shape[1], in_channels=data_shape[0], out_channels=data_shape[0],
                             block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block, down_block_types=down,
                             up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)), norm_num_groups=norm_num_groups,
                             num_class_embeds=num_classes + 1 if num_classes else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        elif not self.num_classes and y is not None:
            raise ValueError("this model is unconditional (trained without model.num_classes); it takes no class labels")
        return self.unet(x, t, class_labels=y).sample


MAX_SAMPLE_SIZE = 4096  # a foreign folder's image size: beyond it, sampling one image would not fit any machine
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # diffctl's names -> diffusers' schedulers'


def is_pipeline_folder(path) -> bool:
    """A diffusers model folder: a pipeline (model_index.json) with a unet/ and a scheduler/."""
    from pathlib import Path

    path = Path(path)
    return path.is_dir() and (path / "unet" / "config.json").is_file() and (path / "scheduler" / "scheduler_config.json").is_file()


def load_pipeline_folder(folder):
    """(network, alpha_bar float64 [T], prediction) of a diffusers folder: its UNet2DModel behind diffctl's network
    interface, the schedule of its scheduler (exact when the config lists trained_betas) and its prediction type."""
    from pathlib import Path

    from ..io.files import read_json
    from .sizing import check_fits_weights

    folder = Path(folder)
    unet_config = read_json(folder / "unet" / "config.json", f"the diffusers folder {folder}")
    config = read_json(folder / "scheduler" / "scheduler_config.json", f"the diffusers folder {folder}")
    size = unet_config.get("sample_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SAMPLE_SIZE:
        raise UsageError(f"the diffusers folder {folder}: unet sample_size {size!r} is not an image size in [1, {MAX_SAMPLE_SIZE}]")
    betas = config.get("trained_betas")
    if betas is not None and not (isinstance(betas, list) and 2 <= len(betas) <= 10**5 and all(isinstance(b, (int, float)) and 0 < b < 1 for b in betas)):
        raise UsageError(f"the diffusers folder {folder}: trained_betas is not a list of 2 to 100,000 numbers in (0, 1)")
    steps = config.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or not 2 <= steps <= 10**5:
        raise UsageError(f"the diffusers folder {folder}: num_train_timesteps {steps!r} is not in [2, 100000]")
    cls = unet2d()
    check_fits_weights(lambda: cls.from_config(unet_config), list((folder / "unet").glob("diffusion_pytorch_model*")), f"the diffusers folder {folder}")
    try:
        unet = cls.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False)  # (True asks for the accelerate package)
        if betas is not None:
            betas = torch.tensor(betas, dtype=torch.float64)
        else:
            from diffusers import DDPMScheduler

            betas = DDPMScheduler.from_pretrained(str(folder / "scheduler")).betas.double()
    except UsageError:
        raise
    except Exception as e:  # a foreign or broken folder
        raise UsageError(f"cannot read the diffusers folder {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    kind = config.get("prediction_type", "epsilon")
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(kind) if isinstance(kind, str) else None
    if prediction is None:
        raise UsageError(f"{folder}: prediction_type {kind!r} is not one diffctl samples ({', '.join(PREDICTION_TYPES.values())})")
    net = nn.Module.__new__(DiffusersUNet)
    nn.Module.__init__(net)
    net.unet, net.num_classes = unet, (unet.config.num_class_embeds or 1) - 1
    return net.eval(), torch.cumprod(1 - betas, 0), prediction


def save_pipeline_folder(folder, net: DiffusersUNet, alpha_bar: torch.Tensor, prediction: str, clip: bool) -> None:
    """``net`` and its schedule as a diffusers DDPMPipeline folder whose scheduler samples as ``diffctl sample`` does by
    default: the betas written out exactly, x0_hat clamped to [-1, 1] for pixel data (``clip``: without it, diffusers'
    1,000 default steps saturate a trained model's pixels to black and white), trailing spacing, the posterior variance."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from ..core.schedules import betas_from_alpha_bar

    betas = betas_from_alpha_bar(alpha_bar.double())
    scheduler = DDPMScheduler(num_train_timesteps=len(betas), trained_betas=betas.tolist(), prediction_type=PREDICTION_TYPES[prediction],
                              clip_sample=clip, clip_sample_range=1.0, timestep_spacing="trailing", variance_type="fixed_small")
    DDPMPipeline(unet=net.unet, scheduler=scheduler).save_pretrained(str(folder))
