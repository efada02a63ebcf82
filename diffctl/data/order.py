"""The order in which training sees its data: a new shuffle every epoch, as a pure function of (seed, step).

Step ``s`` of a run with global batch ``B`` takes the items at positions ``s*B .. (s+1)*B - 1`` of an endless
sequence of epochs, each a permutation of the ``N`` training items seeded by (seed, epoch).  Every item is seen
once per epoch; nothing about the order is state, so a run resumed at any step (mid-epoch too) reads what the
uninterrupted run read there, and an in-memory run and a streaming one (``dataset.in_memory=false``: a
DataLoader's workers read the files of the steps ahead) read the same items in the same order.  Permutations
come from a CPU generator, so the order is the same on every device.
"""

from __future__ import annotations

import hashlib

import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s permutation in a run seeded ``seed`` (a 63-bit hash of the two)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:epoch:{epoch}".encode(), digest_size=8).digest(), "little") >> 1


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the ``n`` training items in epoch ``epoch``: ``[n]`` long, on the CPU."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


class EpochOrder:
    """``order(step, batch)``: the items of a step's global batch, from the epochs' permutations (the current one or
    two cached on ``device``; a batch larger than the dataset spans several)."""

    def __init__(self, seed: int, n: int, device: torch.device | str = "cpu"):
        self.seed, self.n, self.device = seed, n, torch.device(device)
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            perm = epoch_permutation(self.seed, epoch, self.n)
            cuda = self.device.type == "cuda"  # one copy per epoch, without the host waiting for the device
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # the previous epoch's, for a batch across the boundary
            self._perms[epoch] = (perm.pin_memory() if cuda else perm).to(self.device, non_blocking=cuda)
        return self._perms[epoch]

    def __call__(self, step: int, batch: int) -> torch.Tensor:
        start, stop = step * batch, (step + 1) * batch
        parts = []
        for epoch in range(start // self.n, (stop - 1) // self.n + 1):
            lo, hi = max(start, epoch * self.n), min(stop, (epoch + 1) * self.n)
            parts.append(self.permutation(epoch)[lo - epoch * self.n: hi - epoch * self.n])
        return parts[0] if len(parts) == 1 else torch.cat(parts)
