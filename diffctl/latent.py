"""Latent diffusion: a trained autoencoder (``task=autoencoder``) and the dataset seen through it.

``diffctl train latent.autoencoder=<run folder|checkpoint|latest>`` trains any model, schedule and
loss on the autoencoder's latents instead of the pixels:

* the training and test splits are encoded once (posterior means, in batches on the training
  device) and cached under ``paths.cache_dir``, keyed by the autoencoder's content hash and the
  data's fingerprint;
* the latents are scaled to unit variance by a factor measured on the training split (Stable
  Diffusion's 0.18215 is such a factor, measured once on its VAE) and stored in the checkpoint;
* the checkpoint records which autoencoder it needs (path and SHA-256 of its file), so sampling
  decodes through exactly that one, and a moved or changed autoencoder is a one-line error.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .config import option_schema
from .errors import UsageError
from .io.checkpoint import TRAINED, inert_config, load_checkpoint, require
from .io.files import file_sha256
from .models import AUTOENCODERS
from .models.autoencoder import KLAutoencoder

log = logging.getLogger("diffctl.latent")


def latent_mask(hole: torch.Tensor, latent_shape) -> torch.Tensor:
    """The latent positions to regenerate ``[c, h, w]`` (1 = regenerate) for the pixels ``hole`` ``[C, H, W]``: every
    position whose patch of pixels touches the hole (max-pooling), in every latent channel."""
    c, h, w = latent_shape
    m = torch.nn.functional.adaptive_max_pool2d(hole.amax(0)[None, None].float(), (h, w))[0, 0]
    return m.expand(c, h, w).clone()


@dataclass
class LatentSpace:
    """A trained autoencoder seen as the map between pixels and (scaled) latents."""

    autoencoder: KLAutoencoder
    path: str  # its checkpoint file
    sha256: str  # of that file
    scale: float  # latents are multiplied by this (1 / their std on the training split)
    pixel_shape: tuple  # [C, H, W] of the images

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] -> scaled latents (posterior means), on x's device."""
        device = next(self.autoencoder.parameters()).device
        return torch.cat([self.autoencoder.encode(b.to(device))[0].float().to(x.device) for b in x.split(batch_size)]) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1], on z's device."""
        device = next(self.autoencoder.parameters()).device
        return torch.cat([self.autoencoder.decode(b.to(device) / self.scale).float().clamp(-1, 1).to(z.device) for b in z.split(batch_size)])

    def record(self) -> dict:
        """What a latent model's checkpoint stores about the space it was trained in."""
        return {"autoencoder": self.path, "sha256": self.sha256, "scale": self.scale, "pixel_shape": list(self.pixel_shape)}


def load_autoencoder(path: Path, device: torch.device) -> KLAutoencoder:
    """The EMA weights of a ``task=autoencoder`` checkpoint, in eval mode on ``device``."""
    from omegaconf.errors import OmegaConfBaseException

    from .models.sizing import check_matches
    from .validation import check_values

    state = load_checkpoint(path)
    require(state, path, TRAINED)
    cfg = inert_config(state["config"])
    if cfg.get("task") != "autoencoder":
        raise UsageError(f"latent.autoencoder={path} is not an autoencoder (task={cfg.get('task', 'diffusion')}): train one with "
                         f"'diffctl train task=autoencoder'")
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    try:
        check_values(cfg)  # sizes within range before anything is built
        ae_cfg = OmegaConf.merge(OmegaConf.structured(option_schema("autoencoder", cfg.autoencoder.name)), cfg.autoencoder)
        build = lambda: AUTOENCODERS.build(ae_cfg, tuple(state["data_shape"]))  # noqa: E731
        check_matches(build, weights, f"latent.autoencoder={path}")
        net = build()
    except (OmegaConfBaseException, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"latent.autoencoder={path}: malformed autoencoder checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    net.load_state_dict(weights)
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UsageError(f"latent.autoencoder={path}: its weights are not finite ({bad} holds NaN or inf); use an earlier checkpoint of that run")
    return net.to(device).eval().requires_grad_(False)


def latent_space(spec: str, output_root: Path, device: torch.device, data) -> LatentSpace:
    """``latent.autoencoder=<spec>`` for training on ``data``: the autoencoder's space, its scale still 1.  Its path is
    stored absolute, so the run finds it from any working directory."""
    from .io.rundir import resolve_checkpoint

    path = resolve_checkpoint(spec, output_root, key="latent.autoencoder", tasks=("autoencoder",)).resolve()
    ae = load_autoencoder(path, device)
    if tuple(data.shape) != tuple(ae.data_shape):
        raise UsageError(f"latent.autoencoder={path} was trained on images of shape {list(ae.data_shape)}; dataset={data.name} has "
                         f"{list(data.shape)}")
    return LatentSpace(ae, str(path), file_sha256(path), 1.0, tuple(data.shape))


def _read_cache(cache: Path, space: LatentSpace, data, shape: tuple):
    """(train, test) latents of a cache file when it is the one ``space`` makes of ``data`` (its autoencoder's hash, the
    data's fingerprint, float32 tensors of the latent shape, one per image); None, saying why, for any other file."""
    from .io.files import read_bytes

    try:
        stored = torch.load(io.BytesIO(read_bytes(cache, "latent cache", 1 << 40)), map_location="cpu", weights_only=True)
        if not isinstance(stored, dict):
            raise ValueError("not a dict")
        train, test = stored.get("train"), stored.get("test")
        if stored.get("sha256") != space.sha256 or stored.get("fingerprint") != data.fingerprint:
            raise ValueError("made by another autoencoder or of other data")
        for name, x, n in (("train", train, len(data.train)), ("test", test, len(data.test))):
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or tuple(x.shape) != (n, *shape):
                raise ValueError(f"its {name} latents are not {n} float32 tensors of shape {list(shape)}")
        if stored.get("checksum") != _checksum(train, test):
            raise ValueError("its latents are not the ones written (checksum mismatch)")
        return train, test
    except Exception as e:  # torch's, the unpickler's, ours: any reason means the same thing, encode again
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        log.warning("latent cache %s is not usable (%s): encoding the dataset again", cache, detail)
        return None


def _checksum(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def latent_dataset(space: LatentSpace, data, cache_dir: Path, measure_scale: bool = False):
    """``data`` seen through ``space``: its splits encoded (cached under ``cache_dir`` by the autoencoder's hash and the
    data's fingerprint) and scaled; ``measure_scale`` first sets the space's scale to 1 / the train latents' std.  A cache
    that is unreadable or not this autoencoder's is encoded again; one that cannot be written is only reported."""
    from .io.files import write_atomic

    cache = Path(cache_dir) / f"latents_{space.sha256[:16]}_{data.fingerprint}.pt"
    stored = _read_cache(cache, space, data, tuple(space.autoencoder.latent_shape)) if cache.exists() else None
    if stored is not None:
        train, test = stored
    else:
        scale, space.scale = space.scale, 1.0
        train, test = space.encode(data.train), space.encode(data.test)  # unscaled
        space.scale = scale
        buffer = io.BytesIO()
        torch.save({"train": train, "test": test, "sha256": space.sha256, "fingerprint": data.fingerprint, "checksum": _checksum(train, test)},
                   buffer)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, buffer.getvalue(), "latent cache")  # a name of its own per process: two runs may build it at once
        except (UsageError, OSError) as e:
            log.warning("%s; training goes on without the cache", e)
    if measure_scale:
        space.scale = float(1 / train.std())
        log.info("latent space of %s: latents %s, scale %.5f (1 / their std on the train split)", space.path, list(train.shape[1:]), space.scale)
    return replace(data, train=train * space.scale, test=test * space.scale, levels=None, oracle=None, hflip=False)


def space_of(record: dict, device: torch.device) -> LatentSpace:
    """The latent space a latent model's checkpoint names (``LatentSpace.record``): its autoencoder, checked unchanged."""
    kinds = {"autoencoder": str, "sha256": str, "scale": (int, float), "pixel_shape": list}
    bad = next((k for k, kind in kinds.items() if not isinstance(record.get(k), kind)), None) if isinstance(record, dict) else "latent"
    if bad is not None or not 0 < float(record["scale"]) < 1e6:
        raise UsageError(f"malformed latent record in this model's checkpoint ({bad or 'scale'!r} missing or of the wrong type)")
    path = Path(record["autoencoder"])
    if not path.is_file():
        raise UsageError(f"this latent model decodes through the autoencoder {path}, which is not there any more (moved or deleted); "
                         f"put it back: its SHA-256 is {record['sha256'][:16]}...")
    if file_sha256(path) != record["sha256"]:
        raise UsageError(f"the autoencoder {path} has changed since this latent model was trained on it (SHA-256 mismatch): "
                         f"restore that checkpoint, or train the latent model again")
    return LatentSpace(load_autoencoder(path, device), str(path), record["sha256"], float(record["scale"]), tuple(record["pixel_shape"]))
