"""Training data that does not fit in memory (``dataset.in_memory=false``; by default above 4 GiB decoded): the
training split stays a list of image files, read by a DataLoader's workers a few steps ahead of the trainer.

``StepBatches`` is the sampler: step by step, this process's share of the step's global batch, in the epoch order of
``order.EpochOrder``.  It plays the part of torch's DistributedSampler under torchrun, but as a function of the step:
it resumes mid-epoch exactly, and each rank reads the contiguous share of the global batch it trains on, so N
processes still follow the trajectory of one (DistributedSampler splits every epoch by stride and can only restart an
epoch from its beginning).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import UsageError
from .order import EpochOrder

STREAM_ABOVE = 4 * 2**30  # bytes of decoded float32 training images above which dataset.in_memory=null streams


class FileImages(torch.utils.data.Dataset):
    """The images of ``paths``, decoded on demand as ``read(path)`` does (crop, resize, channels): ``[C, H, W]`` float32
    in [-1, 1], exactly what the in-memory split holds for them.  ``shape`` and ``ndim`` are those of the split, as a
    tensor's: ``[N, C, H, W]``."""

    def __init__(self, paths: list, read, item_shape: tuple, what: str):
        self.paths, self.read, self.item_shape, self.what = list(paths), read, tuple(item_shape), what
        self.shape, self.ndim = (len(self.paths), *self.item_shape), 1 + len(self.item_shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        arr = self.read(self.paths[i])
        if arr.shape != self.item_shape:
            raise UsageError(f"{self.what}: {self.paths[i]} is {list(arr.shape)} after resizing, the others {list(self.item_shape)}; "
                             f"set dataset.image_size=N to resize them all")
        # C-contiguous: an RGB image comes as an [H, W, C] buffer seen transposed, and np.array would keep that layout (and
        # the batch would be channels-last, which convolutions round differently from the in-memory batch)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)) / 255 * 2 - 1

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4


class StepBatches(torch.utils.data.Sampler):
    """The items of steps ``start .. steps - 1``, each step this rank's share of the global batch of ``batch``."""

    def __init__(self, n: int, seed: int, batch: int, start: int, steps: int, rank: int = 0, world: int = 1):
        self.order, self.batch, self.start, self.steps = EpochOrder(seed, n), batch, start, steps
        self.share = slice(rank * batch // world, (rank + 1) * batch // world)

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def __iter__(self) -> Iterator[list]:
        for step in range(self.start, self.steps):
            yield self.order(step, self.batch)[self.share].tolist()


def loader(files: FileImages, sampler: StepBatches, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """Batches of ``files`` in ``sampler``'s order: ``workers`` processes decode the images of the next steps (pinned for
    an asynchronous copy to a GPU).  The loader gets a generator of its own: by default each iterator draws its workers'
    base seed from torch's global generator, which would shift the run's dropout draws (and break exact resume)."""
    return torch.utils.data.DataLoader(files, batch_sampler=sampler, num_workers=workers, pin_memory=pin, persistent_workers=False,
                                       prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(sampler.order.seed))


def next_batch(batches: Iterator) -> torch.Tensor:
    """The next batch; an unreadable image in a worker is the one-line UsageError it raised there."""
    try:
        return next(batches)
    except UsageError as e:  # a worker's error comes back with its traceback in the message: keep the error's own line
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        raise UsageError(lines[-1].split("UsageError: ", 1)[-1]) from None
