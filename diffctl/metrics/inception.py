"""fid, kid and is in the TF-2015 Inception-v3 features of torch-fidelity, from a weights file on disk.

Nothing is ever downloaded: without ``inception_weights`` (or DIFFCTL_INCEPTION_WEIGHTS) the
metrics are skipped.  The file is read once, hashed (sha256) and checked with
``torch.load(weights_only=True)`` before torch-fidelity (which unpickles with
``weights_only=False``) is handed exactly those verified bytes.  Train- and test-split features
are cached per dataset, weights hash and ``PROTOCOL_VERSION`` under ``paths.cache_dir``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .distances import chunked_frechet, gaussian_stats
from .distances import kid as kid_distance
from .registry import EvalContext, Skipped, register

log = logging.getLogger("diffctl.metrics")

PROTOCOL_VERSION = 1  # bump when anything in PROTOCOL changes: old feature caches are then ignored
BATCH = 100
IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020  # torch-fidelity's default: the items are permuted before splitting
PROTOCOL = {
    "version": PROTOCOL_VERSION,
    "input": "uint8 = round((x + 1) * 127.5) clamped to [0, 255]; grey repeated to 3 channels",
    "resize": "to 299x299 inside torch-fidelity: TF1-compatible bilinear, align_corners=False, no antialiasing",
    "features": "pool3 (2048-d) for fid and kid; softmax(logits_unbiased) (1008 classes) for is",
    "batch": BATCH,
    "statistics": "float64; covariance unbiased; reference: train split; floor: test split vs train at the test-split size",
    "is": f"{IS_SPLITS} splits after a permutation with seed {IS_SHUFFLE_SEED}; mean and population std of exp(E KL(p(y|x) || p(y)))",
}
EXTRACTOR_NAME = "inception-v3-tf-2015-12-05"
FEATURES = ["2048", "logits_unbiased"]
NO_WEIGHTS = ("no Inception weights on disk: set inception_weights=PATH or DIFFCTL_INCEPTION_WEIGHTS "
              "(weights-inception-2015-12-05-6726825d.pth from torch-fidelity); never downloaded")


def _rgb_images(data) -> Optional[str]:
    if not data.is_image:
        return "needs image data"
    if data.shape[0] not in (1, 3):
        return f"needs grey or RGB images; got {data.shape[0]} channels"
    return None


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] ``[N, C, H, W]`` -> uint8 ``[N, 3, H, W]`` (grey repeated to 3 channels)."""
    u = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u.expand(-1, 3, -1, -1) if u.shape[1] == 1 else u


def _one_line(e: Exception) -> str:
    """The informative part of a (possibly multi-line) torch.load error, on one line."""
    lines = []
    for line in str(e).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not line.startswith(("Weights only load failed", "Check the documentation")):
            lines.append(line)
    return f"{type(e).__name__}: {'; '.join(lines) or 'unreadable'}"[:300]


def read_weights(path) -> tuple[bytes, str]:
    """(bytes, sha256 hex) of a weights file, verified to be a plain state dict of tensors.

    The check is ``torch.load(weights_only=True)``: a pickle that would build anything but
    tensors and containers (e.g. call a function) is rejected without running it.
    """
    b = Path(path).read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            state = torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: not a weights file
        raise ValueError(f"not a weights file: {path} ({_one_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"not a weights file: {path} (expected a state dict of tensors, got {type(state).__name__})")
    return b, hashlib.sha256(b).hexdigest()


def load_extractor(path, device=torch.device("cpu")) -> tuple[torch.nn.Module, dict]:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with verified weights from ``path``, and its info."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        version = importlib.metadata.version("torch-fidelity")
    except ImportError:
        raise Skipped("torch-fidelity is not installed (pip install torch-fidelity)") from None
    b, sha = read_weights(path)
    try:  # never path=None: torch-fidelity would download
        net = FeatureExtractorInceptionV3(EXTRACTOR_NAME, FEATURES, feature_extractor_weights_path=io.BytesIO(b))
    except RuntimeError as e:  # load_state_dict: missing / unexpected / mis-shaped keys
        raise ValueError(f"not Inception-v3 weights: {path} ({str(e).splitlines()[0][:200]})") from None
    info = {"name": EXTRACTOR_NAME, "sha256": sha[:12], "protocol": PROTOCOL, "torch_fidelity": version}
    return net.to(device).eval(), {**info, "sha256_full": sha}


@torch.no_grad()
def extract(net: torch.nn.Module, x: torch.Tensor, device=torch.device("cpu"), batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool3 features [N, 2048], unbiased logits [N, 1008]) of images in [-1, 1], float32 on the CPU."""
    feats, logits = [], []
    for i in range(0, len(x), batch):
        f, l = net(to_uint8(x[i:i + batch]).to(device))
        feats.append(f.float().cpu())
        logits.append(l.float().cpu())
    return torch.cat(feats), torch.cat(logits)


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, shuffle_seed: Optional[int] = IS_SHUFFLE_SEED) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split, p = softmax(logits).

    Items are permuted with ``shuffle_seed`` (None: kept in order) and cut into ``splits``
    equal parts, as torch-fidelity does; returns (mean, population std) over splits, in float64.
    """
    n = len(logits)
    if n < splits:
        raise ValueError(f"Inception Score needs at least {splits} items for {splits} splits; got {n}")
    if shuffle_seed is not None:
        logits = logits[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n))]
    log_p = logits.double().log_softmax(1)
    scores = []
    for i in range(splits):
        lp = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = lp.logsumexp(0) - np.log(len(lp))  # log p(y) of the split
        scores.append((lp.exp() * (lp - log_marginal)).sum(1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _split_features(net, info: dict, data, split: str, cache_dir: Path, device) -> dict:
    """Features and Gaussian statistics of a real split, cached as .npz (checked: protocol, weights, images)."""
    x = getattr(data, split)
    images = to_uint8(x).contiguous()
    data_sha = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    protocol = json.dumps(PROTOCOL, sort_keys=True)
    path = Path(cache_dir) / f"inception_{data.name}_{split}_{data_sha[:12]}_{info['sha256']}_p{PROTOCOL_VERSION}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if (str(z["protocol"]) == protocol and str(z["weights_sha256"]) == info["sha256_full"]
                        and str(z["data_sha256"]) == data_sha and int(z["n"]) == len(x)):
                    return {"features": torch.from_numpy(z["features"]), "logits": torch.from_numpy(z["logits"]),
                            "mu": z["mu"], "sigma": z["sigma"], "path": path}
            log.info("Inception feature cache %s is stale (protocol, weights or images changed): recomputing", path)
        except (OSError, KeyError, ValueError) as e:
            log.info("Inception feature cache %s is unreadable (%s): recomputing", path, e)
    log.info("Inception features of %s/%s (%d images; cached at %s)", data.name, split, len(x), path)
    feats, logits = extract(net, x, device)
    mu, sigma = gaussian_stats(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, features=feats.numpy(), logits=logits.numpy(), mu=mu, sigma=sigma, protocol=np.array(protocol),
                     weights_sha256=np.array(info["sha256_full"]), data_sha256=np.array(data_sha), n=np.array(len(x)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"features": feats, "logits": logits, "mu": mu, "sigma": sigma, "path": path}


@dataclass
class _Features:
    info: dict  # the feature extractor, as reported
    train: dict  # features, logits, mu, sigma of the real splits
    test: dict
    gen: torch.Tensor  # pool3 features of the samples
    gen_logits: torch.Tensor
    n: int  # the test-split size
    floors: dict  # real-vs-real floors, shared by the grid cells of one evaluation

    def floor(self, key, fn):
        if key not in self.floors:
            self.floors[key] = fn()
        return self.floors[key]


def _inception(ctx: EvalContext) -> _Features:
    """The real and generated features of this evaluation.

    The extractor, the real features and the floors are computed once per evaluation
    (``ctx.memo``); the generated features once per sample set (while ``ctx.samples()`` returns
    the same tensor), so fid, kid and is share one pass through Inception.
    """
    path = ctx.options.get("inception_weights")
    if not path:
        raise Skipped(NO_WEIGHTS)
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise Skipped(f"Inception weights file not found: {path}")
    key = ("inception", str(path))
    if key not in ctx.memo:
        net, info = load_extractor(path, ctx.device)
        train = _split_features(net, info, ctx.data, "train", ctx.cache_dir, ctx.device)
        test = _split_features(net, info, ctx.data, "test", ctx.cache_dir, ctx.device)
        ctx.memo[key] = {"net": net, "info": info, "train": train, "test": test, "samples": None, "floors": {}}
    m = ctx.memo[key]
    samples = ctx.samples()
    n = len(m["test"]["features"])
    if len(samples) < n:
        raise ValueError(f"fid, kid and is need num_samples >= {n} (the test-split size, for an equal-count floor); got {len(samples)}")
    if m["samples"] is None or m["samples"][0] is not samples:  # holding the tensor keeps the identity check sound
        m["samples"] = (samples, *extract(m["net"], samples, ctx.device))
    info = {k: v for k, v in m["info"].items() if k != "sha256_full"}
    return _Features(info, m["train"], m["test"], m["samples"][1], m["samples"][2], n, m["floors"])


def _common(f: _Features) -> dict:
    return {"feature_extractor": {k: v for k, v in f.info.items() if k != "torch_fidelity"}, "torch_fidelity": f.info["torch_fidelity"]}


@register("fid", _rgb_images, equal_count=True)
def fid(ctx: EvalContext) -> dict:
    """FID: Frechet distance in Inception pool3 features, generated vs train split.

    Generated samples are scored in chunks of the test-split size and averaged, so the value and
    its floor (held-out test images vs train) are measured at the same sample count; ``err`` and
    ``floor_err`` are jackknife errors (as for fd_ref).
    """
    f = _inception(ctx)
    result = chunked_frechet(f.gen, f.test["features"], f.train["features"], ctx.seed)
    return {**result, "n_train": len(f.train["features"]), **_common(f)}


@register("kid", _rgb_images, equal_count=True)
def kid(ctx: EvalContext) -> dict:
    """KID: unbiased MMD^2, cubic polynomial kernel, in Inception pool3 features, generated vs train.

    The published protocol: mean and std over 100 subsets of min(100, test-split size) items
    (``subset_std``: the spread of one subset's estimate, not the mean's error; reported as is,
    not x1000); the floor is the test split vs train with the same subset size.
    """
    f = _inception(ctx)
    m = min(100, f.n)
    value, std = kid_distance(f.gen, f.train["features"], subset_size=m, seed=ctx.seed)
    floor, floor_std = f.floor(("kid", m, ctx.seed), lambda: kid_distance(f.test["features"], f.train["features"], subset_size=m, seed=ctx.seed))
    return {"value": value, "subset_std": std, "subset_size": m, "n": len(f.gen), "floor": floor, "floor_subset_std": floor_std,
            "floor_n": f.n, **_common(f)}


@register("is", _rgb_images, equal_count=True, better="higher")
def is_(ctx: EvalContext) -> dict:
    """Inception Score of all generated samples (higher is better; at most 1008 classes).

    ``split_std`` is the std over splits (the published protocol); ``floor`` is the score of the
    held-out test split (``floor_n`` images), what real images get; the score grows with n, so
    read value and floor with both counts in mind.
    """
    f = _inception(ctx)
    splits = min(IS_SPLITS, f.n)
    value, std = inception_score(f.gen_logits, splits)
    floor, floor_std = f.floor(("is", splits), lambda: inception_score(f.test["logits"], splits))
    return {"value": value, "split_std": std, "splits": splits, "n": len(f.gen_logits), "floor": floor, "floor_split_std": floor_std,
            "floor_n": f.n, **_common(f)}
