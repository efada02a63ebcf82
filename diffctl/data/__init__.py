"""Datasets by registry name (``dataset.name``), held in memory as tensors scaled to [-1, 1].

Every dataset is a ``Dataset`` with a fixed train/test split, the shape of one item, its
number of quantisation levels (17 for the 8x8 digits, 256 for 8-bit images, None for
continuous 2-D data; likelihoods in bits/dim depend on it) and its class labels.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..core.registry import Registry
from . import digits, gmm1d, toy2d, vision
from .stream import FileImages


@dataclass
class Dataset:
    name: str
    train: torch.Tensor | FileImages  # [N, C, H, W] or [N, D], in [-1, 1] for images; image files when streamed (dataset.in_memory)
    test: torch.Tensor
    train_labels: Optional[torch.Tensor] = None  # [N] long
    test_labels: Optional[torch.Tensor] = None
    levels: Optional[int] = None  # quantisation levels of the pixels; None for continuous data
    num_classes: int = 0
    oracle: Optional[Callable] = None  # the exact denoiser D(x, sigma), where the distribution is known
    hflip: bool = False  # the trainer flips training images horizontally at random (augmentation)
    train_captions: Optional[list] = None  # a caption per image (dataset=folder dataset.captions=<metadata.jsonl>), for cond=text|clip
    test_captions: Optional[list] = None
    train_controls: Optional[torch.Tensor] = None  # a control image per image (dataset=folder dataset.controls=<folder>), for task=controlnet
    test_controls: Optional[torch.Tensor] = None

    @property
    def shape(self) -> tuple:
        return tuple(self.train.shape[1:])

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, FileImages)

    @property
    def is_image(self) -> bool:
        return self.train.ndim == 4

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the data itself (both splits, labels, levels, classes): what a cache of anything
        computed from this dataset is keyed by, so two datasets of one name (two folders, roots, image
        sizes, limits) never share one."""
        h = hashlib.blake2b(digest_size=8)
        h.update(repr((self.name, self.shape, self.levels, self.num_classes)).encode())
        for t in (self.train, self.test, self.train_labels, self.test_labels):
            if isinstance(t, FileImages):  # streamed: the files and how they are read
                h.update(repr((t.paths, t.item_shape, t.read.keywords)).encode())
                continue
            h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
        if self.train_captions is not None:
            h.update(repr((self.train_captions, self.test_captions)).encode())
        if self.train_controls is not None:
            h.update(self.train_controls.numpy().tobytes() + self.test_controls.numpy().tobytes())
        return h.hexdigest()


# A dataset is a reader ``load(name, *, <options>) -> dict`` of the Dataset fields; its keyword-only
# parameters are the fields of its ``dataset`` config group.  One reader may serve several names.
DATASETS = Registry("dataset")
DATASETS.register("digits")(digits.load)
DATASETS.register("digits_gmm")(digits.load_gmm)
DATASETS.register(*toy2d.DISTRIBUTIONS)(toy2d.load)
DATASETS.register("gmm1d")(gmm1d.load)
DATASETS.register(*vision.READERS)(vision.load)


def load_dataset(cfg, stream: bool = False) -> Dataset:
    """Load the dataset described by the ``dataset`` config group; only with ``stream`` (training) may its training split
    be image files to stream (``dataset.in_memory``); sampling and evaluation read it into memory."""
    values = DATASETS.values(cfg)
    if not stream and "in_memory" in values:
        values["in_memory"] = True
    return Dataset(name=cfg.name, **DATASETS.build({**values, DATASETS.key: cfg.name}, cfg.name))


def quantize(x: torch.Tensor, levels: Optional[int]) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the dataset's pixel levels, as a saved image would be."""
    if levels is None:
        return x
    step = 2 / (levels - 1)
    return ((x.clamp(-1, 1) + 1) / step).round() * step - 1
