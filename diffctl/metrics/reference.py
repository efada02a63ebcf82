"""A small reference classifier per image dataset: the feature space of ``fd_ref``.

Trained deterministically (fixed seed, fixed epochs, full-batch order from a seeded
generator) on the train split, cached under ``paths.cache_dir`` keyed by the dataset's
fingerprint (a hash of its images and labels) and ``VERSION``, and reported with its test accuracy beside every number computed with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from ..errors import UsageError
from ..io.checkpoint import load_checkpoint, save_checkpoint

VERSION = 1  # bump when the architecture or the recipe changes: old caches are then ignored
log = logging.getLogger("diffctl.metrics")


class RefNet(nn.Module):
    """conv-conv-pool-conv-pool -> 128-d features -> logits. ``features`` is the FD space."""

    def __init__(self, in_channels: int, num_classes: int, size: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@torch.enable_grad()
def _fit(data, epochs: int = 40, seed: int = 0) -> RefNet:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = RefNet(data.shape[0], data.num_classes, data.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = data.train, data.train_labels
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()  # +-1 pixel jitter
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: RefNet, x: torch.Tensor, y: torch.Tensor) -> float:
    return (net(x).argmax(1) == y).float().mean().item()


def _cached(path: Path, data) -> RefNet | None:
    """The classifier stored at ``path``, or None if there is none or it cannot be read."""
    if not path.exists():
        return None
    try:
        net = RefNet(data.shape[0], data.num_classes, data.shape[1])
        net.load_state_dict(load_checkpoint(path)["model"])
        return net.eval()
    except (UsageError, KeyError, TypeError, RuntimeError) as e:
        log.warning("reference classifier cache %s is unreadable (%s): training it again", path, str(e).splitlines()[0][:120])
        return None


@contextlib.contextmanager
def _lock(path: Path):
    """Held while the cache at ``path`` is read or trained: one process trains it while the others wait and then read
    its file (sweep jobs evaluated side by side). A cache folder that cannot hold a lock (read-only) is read without one."""
    lock = FileLock(f"{path}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def reference_classifier(data, cache_dir: Path) -> tuple[RefNet, dict]:
    """The cached reference classifier of ``data`` (trained on first use), with its info."""
    name = f"refnet_{data.name}_{data.fingerprint}_v{VERSION}"
    path = Path(cache_dir) / f"{name}.pt"
    with _lock(path):
        net = _cached(path, data)
        if net is None:
            log.info("training the reference classifier for %s (once; cached at %s)", data.name, path)
            net = _fit(data)
            save_checkpoint(path, {"model": net.state_dict()})
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.state_dict().values())).hexdigest()[:12]
    return net, {"name": name, "sha256": digest, "test_accuracy": round(accuracy(net, data.test, data.test_labels), 4)}
