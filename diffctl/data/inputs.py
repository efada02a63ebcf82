"""Images a user names as a command's input (``inpaint.image=``, ``superres.image=``, ``control.image=``): indices into
the dataset's test split, or a PNG file checked against the model's image shape."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ..errors import UsageError


def load_png(path: str, shape: tuple, what: str) -> torch.Tensor:
    """A PNG as ``[C, H, W]`` in [-1, 1], checked against the data's shape (``what``: the config key, for errors)."""
    from .vision import open_image

    img = open_image(path, what)
    c, h, w = shape
    if img.size != (w, h):
        raise UsageError(f"{what}={path} is {img.size[0]}x{img.size[1]}; this model's images are {w}x{h}")
    arr = torch.from_numpy(np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32)).reshape(h, w, c)
    return arr.permute(2, 0, 1) / 127.5 - 1


def test_images(spec, data, key: str) -> Optional[tuple[torch.Tensor, list]]:
    """``key=<index | [indices] | null>``: (those test-split images, their names), null meaning the whole split; None when
    ``spec`` names a file instead."""
    if not (spec is None or isinstance(spec, int) or OmegaConf.is_list(spec)):
        return None
    index = list(range(len(data.test))) if spec is None else [spec] if isinstance(spec, int) else list(spec)
    bad = [i for i in index if not isinstance(i, int) or not 0 <= i < len(data.test)]
    if bad or not index:
        raise UsageError(f"{key}={spec}: the test split has images 0..{len(data.test) - 1}")
    return data.test[index].float(), [f"test {i}" for i in index]
