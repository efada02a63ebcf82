"""A network that a foreign config describes (a diffusers UNet, a CLIP text model) is sized before it is built: on the
meta device, where no memory is allocated, and compared with the weight files that are to fill it.  A config that asks
for far more parameters than its files hold (a crafted width of 2**20) is refused instead of allocating terabytes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import UsageError

SMALLEST_DTYPE_BYTES = 2  # fp16 / bf16: the most compact weights a real folder holds


def check_fits_weights(build: Callable[[], torch.nn.Module], files: list, what: str) -> None:
    """Refuse (UsageError) when the network ``build()`` makes needs more bytes than the weight ``files`` hold (at two bytes
    a parameter); the network is built on the meta device only."""
    try:
        with torch.device("meta"):
            net = build()
    except UsageError:
        raise
    except Exception as e:  # a config the library itself refuses (a negative size, a wrong type)
        raise UsageError(f"{what}: its config does not build a network ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None
    wanted = sum(p.numel() for p in net.parameters()) * SMALLEST_DTYPE_BYTES
    held = sum(Path(f).stat().st_size for f in files if Path(f).is_file())
    if wanted > held * 1.05 + (1 << 20):
        raise UsageError(f"{what}: its config asks for a network of {wanted / SMALLEST_DTYPE_BYTES:,.0f} parameters, but its weight files hold "
                         f"{held:,} bytes: the config and the weights do not belong together")


def check_matches(build: Callable[[], torch.nn.Module], stored: dict, what: str) -> None:
    """Refuse (UsageError) stored weights that are not those of the network ``build()`` makes: the same names, shapes
    and dtypes (an integer tensor where a float one belongs would skip the finiteness check and sample black), compared
    on the meta device before any memory is allocated for the network."""
    with torch.device("meta"):
        wanted = {k: (tuple(v.shape), v.dtype) for k, v in build().state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in stored.items()}
    if wanted != found:
        diff = sorted(set(wanted) ^ set(found)) or [k for k in wanted if wanted[k] != found[k]]
        key = diff[0]
        detail = key if key not in wanted or key not in found else \
            f"{key}: {list(found[key][0])} {str(found[key][1])[6:]} stored, {list(wanted[key][0])} {str(wanted[key][1])[6:]} expected"
        raise UsageError(f"{what}: its weights do not match the model in its config (first difference: {detail})")
