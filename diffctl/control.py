"""ControlNet on a frozen diffusion run (``diffctl train task=controlnet base=<run|latest> control=edges|lowres|mask``).

Controls are made from the data, offline and on the device, by the same function at training,
sampling and evaluation (``extract``):

    edges   the Sobel gradient magnitude of the image (pixels in [0, 1]) above 2 (half a full step), as 0/1: an edge map
    lowres  the image area-downsampled by 2 and enlarged back (nearest): its coarse shape and shading
    mask    the pixels brighter than mid-grey, as 0/1: a binary silhouette

The null control (dropped at ``trainer.cond_drop_prob`` in training, so classifier-free guidance
over the control works) is all zeros.  The trained network is the base UNet, frozen, plus the
ControlNet branch (``models/controlnet.py``); its checkpoint holds both, and records the base run
it started from (path and SHA-256).  ``control_fidelity`` measures how well samples follow their
controls: the control extracted from each sample against the one it was given (F1 of the edge
pixels, IoU of the masks, PSNR of the 2x-downsampled images).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import UsageError
from .prompting import Cond, PixelTables, dropped

log = logging.getLogger("diffctl.control")

CONTROLS = ("edges", "lowres", "mask")
SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def extract(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The ``kind`` control of images ``x`` ``[N, C, H, W]`` in [-1, 1]: ``[N, 1, H, W]`` (edges, mask) or ``[N, C, H, W]`` (lowres)."""
    if kind == "lowres":
        return F.interpolate(F.avg_pool2d(x.float(), 2), scale_factor=2, mode="nearest")
    gray = (x.float().mean(1, keepdim=True) + 1) / 2
    if kind == "mask":
        return (gray > 0.5).float()
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    k = SOBEL.to(x.device)
    gx, gy = F.conv2d(padded, k[None, None]), F.conv2d(padded, k.T[None, None])
    return ((gx**2 + gy**2).sqrt() > 2.0).float()


def control_channels(kind: str, data_shape) -> int:
    return data_shape[0] if kind == "lowres" else 1


class ControlCond(Cond):
    """``task=controlnet``: the control image of each training image; the network is the frozen base + a ControlNet."""

    name = "control"
    needs_labels = False

    def __init__(self, kind: str, data_shape, record: Optional[dict] = None, base: Optional[str] = None, pixels=None, own=None):
        """``data_shape``: the images' (a latent model's pixels'; ``pixels``: that dataset, whose controls a latent run looks
        up by item index); ``own``: a dataset that brings its own control images (``dataset.controls``), looked up likewise."""
        self.kind = record["kind"] if record else kind
        self.base = record["base"] if record else base  # the base run's checkpoint file (loaded at training only)
        self.base_sha256 = record.get("base_sha256") if record else None
        c, h, w = self.shape = tuple(record.get("shape", data_shape) if record else data_shape)
        self.null = torch.zeros(control_channels(self.kind, self.shape), h, w)
        self.lookup = PixelTables(pixels, lambda x: extract(self.kind, x)) if pixels is not None else None
        if own is not None and own.train_controls is not None:
            self.lookup = PixelTables(SimpleNamespace(train=own.train_controls, test=own.test_controls), self.adapt)

    def adapt(self, controls: torch.Tensor) -> torch.Tensor:
        """A dataset's own control images (in [-1, 1]) as this kind of control: 0/1 maps (white = 1) for edges and masks."""
        return controls.float() if self.kind == "lowres" else (controls.float().mean(1, keepdim=True) > 0).float()

    def draw(self, x0, y, drop, g, index=None, train=True):
        control = extract(self.kind, x0) if self.lookup is None else self.lookup(index, train)
        return dropped(control, self.null, drop, g)

    def inputs(self, labels):
        raise UsageError("a ControlNet is steered by its control images (control.image=), not classes=")

    def network(self, model_cfg, data_shape, classify: int = 0, pretrained: bool = True):
        from .models import build_model
        from .models.controlnet import ControlledUNet

        base = build_model(model_cfg, data_shape)
        if pretrained:  # training starts from the base run's EMA weights (a checkpoint holds them)
            from .runtime import load_trained

            base.load_state_dict(load_trained(Path(self.base), torch.device("cpu")).net.state_dict())
        return ControlledUNet(base, self.null.shape[0], self.null, downsample=self.shape[1] // data_shape[1])

    def record(self):
        from .io.files import file_sha256

        return {"name": self.name, "kind": self.kind, "base": self.base, "base_sha256": self.base_sha256 or file_sha256(Path(self.base)),
                "shape": list(self.shape)}


def _base_checkpoint(cfg) -> Path:
    from .io.rundir import resolve_checkpoint

    if not cfg.get("base"):
        raise UsageError("task=controlnet trains a ControlNet on a frozen diffusion model: give base=<its run folder | checkpoint | latest>")
    return resolve_checkpoint(str(cfg.base), Path(cfg.paths.output_root), key="base")


def base_autoencoder(cfg) -> Optional[str]:
    """The autoencoder checkpoint a latent base run decodes through (None for a pixel-space base): the ControlNet run
    trains in that latent space."""
    from .io.checkpoint import load_checkpoint

    record = load_checkpoint(_base_checkpoint(cfg)).get("latent")
    return record["autoencoder"] if isinstance(record, dict) else None


def load_base(cfg, data, pixels=None) -> tuple[Path, object]:
    """The base run of ``task=controlnet`` (``base=<run folder|checkpoint|latest>``), checked against this run's data
    (``pixels``: a latent run's pixel dataset): (its checkpoint, its ``runtime.Trained``)."""
    from .runtime import load_trained

    path = _base_checkpoint(cfg)
    trained = load_trained(path, torch.device("cpu"))
    base = trained.cfg
    if base.get("task", "diffusion") != "diffusion" or base.model.arch != "unet" or base.model.num_classes or \
            (base.get("cond") or {}).get("name", "none") != "none":
        raise UsageError(f"base={path}: a ControlNet here controls an unconditional unet diffusion model; this one is "
                         f"{'a ' + base.get('task') + ' run' if base.get('task', 'diffusion') != 'diffusion' else 'conditional or not a unet'}")
    images = pixels if pixels is not None else data
    if base.dataset.name != images.name or tuple(trained.data_shape) != tuple(data.shape):
        raise UsageError(f"base={path} was trained on dataset={base.dataset.name} {list(trained.data_shape)}; this run's dataset={images.name} "
                         f"has items of shape {list(data.shape)}: train the ControlNet on the base's dataset")
    return path, trained


def control_inputs(spec, cond: ControlCond, data) -> tuple[torch.Tensor, Optional[torch.Tensor], list]:
    """(control images ``[M, c, H, W]``, the real images they come from when known, names) of ``control.image``: None
    (the test split), a test index or a list of them, or a PNG of the control itself (white = 1)."""
    from .data.inputs import load_png, test_images

    chosen = test_images(spec, data, "control.image")
    if chosen is not None:
        if data.test_controls is not None:  # the dataset's own controls of those test images
            index = [int(n.split()[1]) for n in chosen[1]]
            return cond.adapt(data.test_controls[index]), *chosen
        return extract(cond.kind, chosen[0]), *chosen
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise UsageError(f"control.image={spec}: no such file (give test indices or a PNG of the control)")
    c, h, w = cond.null.shape
    from .data.vision import open_image

    img = open_image(str(path), "control.image")
    channels = len(img.getbands())
    if img.size != (w, h) or (c == 1 and channels not in (1, 2)) or (c == 3 and channels not in (3, 4)):
        raise UsageError(f"control.image={path} is {img.size[0]}x{img.size[1]} with {channels} channel(s); this ControlNet takes "
                         f"{w}x{h} {cond.kind} controls with {c} channel(s)")
    control = load_png(str(path), (c, h, w), "control.image")
    if cond.kind != "lowres":
        control = (control > 0).float()  # a binary map: white = 1
    return control[None], None, [path.name]


def save_control_grid(controls: torch.Tensor, reals: Optional[torch.Tensor], samples: torch.Tensor, path: Path, per_row: int = 6) -> Path:
    """Rows of: the control (white = 1 for edges and masks), up to ``per_row`` samples made with it (sample i has control
    i mod M), the real image it came from when known, for up to 8 controls."""
    from .io.images import save_grid

    m, c = len(controls), samples.shape[1]
    shown = controls if controls.shape[1] == c else (controls * 2 - 1).expand(-1, c, -1, -1)  # a 0/1 map as black / white
    rows = []
    for j in range(min(m, 8)):
        mine = samples[j::m][:per_row].float()
        rows.append(torch.cat([shown[j:j + 1], mine, torch.zeros(per_row - len(mine), *samples.shape[1:]),
                               reals[j:j + 1] if reals is not None else torch.zeros(1, *samples.shape[1:])]))
    save_grid(torch.cat(rows), path, nrow=per_row + 2, headers=[("control", 1), ("samples", per_row), ("real", 1)])
    return path


def fidelity(kind: str, samples: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Per sample, how well its extracted control matches the one it was given: F1 of the edge pixels, IoU of the masks,
    PSNR (dB) of the 2x-downsampled image against the control's (lowres); ``[N]``."""
    got = extract(kind, samples)
    if kind == "lowres":
        mse = (F.avg_pool2d(got, 2) - F.avg_pool2d(controls.float(), 2)).pow(2).flatten(1).mean(1)
        return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
    got, want = got.flatten(1), controls.float().flatten(1)
    both = (got * want).sum(1)
    if kind == "mask":
        union = ((got + want) > 0).float().sum(1)
        return torch.where(union > 0, both / union.clamp_min(1), torch.ones_like(both))
    total = got.sum(1) + want.sum(1)
    return torch.where(total > 0, 2 * both / total.clamp_min(1), torch.ones_like(both))  # F1 = 2 TP / (2 TP + FP + FN)
