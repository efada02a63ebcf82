"""Training and sampling throughput, and model FLOP utilisation against a measured matmul ceiling.

    python scripts/bench.py                                   # unet_small on 8x8 digits-shaped data
    python scripts/bench.py --model unet_base --size 32 --channels 3 --batch 128 --precision bf16 \\
        --device cuda --compile --channels-last --out docs/bench_h200.json
    python scripts/bench.py --peer diffusers --trainer        # also diffusers' UNet2DModel and diffctl's Trainer

Measured after warm-up, on random data of the given shape with the real training objective (eps
loss at uniform timesteps of the cosine schedule, AdamW, gradient clipping) and the real sampler
(DDIM through D(x, sigma)):
  train img/s   forward + backward + optimiser step, images per second
  sample img/s  images per second for ``--sample-steps`` DDIM steps (NFE = steps)
  FLOPs/img     the network's forward FLOPs per image (torch.utils.flop_counter); training costs ~3x
  MFU           achieved model FLOP/s (3x forward for training) / the FLOP/s of a large dense matmul
                measured on the same device and dtype: the ceiling this hardware reaches in practice
With ``--peer diffusers`` (pip install 'diffctl[diffusers]'), in the same process:
  peer train img/s      diffusers' UNet2DModel in the layout of the ``unet`` model (channels, multipliers, res
                        blocks, attention levels, dropout, time embedding, class table: the same parameter count)
                        through the same training step (denoiser, loss, AdamW, clipping, autocast, compile,
                        channels_last) on the same batch; ``train_speedup_vs_peer`` = ours / peer.
                        ``peer_layout_differences`` names what UNet2DModel cannot express (one attention head size
                        and one GroupNorm group count for the whole net, where diffctl has ``heads`` heads at every
                        width and the groups of each width), empty when the layouts are the same
With ``--trainer``:
  trainer img/s         ``diffctl.trainer.Trainer.train_step()``, the step ``diffctl train`` runs (batch drawn from
                        the dataset, EMA update, LR schedule, non-finite checks), on the composed train config with
                        the same model, batch, precision, device, compile and channels_last, no logging, checkpoints,
                        samples or held-out loss in the timed steps; data: digits for 1x8x8, else a folder of random
                        images of the bench's shape (dataset=folder, no flips).  ``trainer_overhead`` = 1 - trainer / raw
Prints a table; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import OmegaConf
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_rounds(fns: dict, device: torch.device, iters: int, rounds: int = 3) -> dict:
    """Seconds per call of each of ``fns`` (each called once before): timed in alternating rounds of ``iters`` calls,
    the median round of each, so that a change in the machine's load between them does not skew their ratios."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device, 1, iters))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _timed(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _fail(message: str) -> NoReturn:
    """A one-line error (no traceback), exit status 2 as argparse's."""
    print(f"bench.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matmul, n = 4096 on CUDA and 1024 on CPU."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, 2, 10 if device.type == "cuda" else 4)
    return 2 * n**3 / seconds


def forward_flops(net: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> int:
    """Forward FLOPs of ``net`` on one image ``x`` [1, C, H, W] at t = 0."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffctl.runtime import autocast

    with torch.no_grad(), FlopCounterMode(display=False) as counter, autocast(device, precision):
        net(x, torch.zeros(1, device=device))
    return counter.get_total_flops()


def make_train_step(net: nn.Module, x0: torch.Tensor, ab: torch.Tensor, device: torch.device, precision: str, compile: str | None):
    """One training step of ``net`` on the batch ``x0``, as the Trainer makes it: eps loss at uniform timesteps drawn on
    the device, network + loss compiled together (``compile``), fused AdamW, gradient clipping to 1, autocast (and fp16's
    GradScaler); no EMA, no skip rule, no bookkeeping."""
    from diffctl.core.diffusion import Denoiser
    from diffctl.core.losses import sigmas_uniform_t, weight_simple
    from diffctl.runtime import autocast

    ab = ab.to(device)
    denoiser = Denoiser(net, ab, "eps")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def loss_of(sigma, noise):
        with autocast(device, precision):
            return denoiser.loss(x0, sigma, noise, weight_simple).mean()

    loss_of = torch.compile(loss_of, mode=compile) if compile else loss_of

    def train_step():
        loss = loss_of(sigmas_uniform_t(len(x0), ab), torch.randn_like(x0))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    return train_step


# --- --peer diffusers ------------------------------------------------------------------------------
class DiffusersAdapter(nn.Module):
    """diffusers' ``UNet2DModel`` behind diffctl's network interface: ``(x, t) -> tensor`` (not an output with
    ``.sample``); a class-conditional one gets the null label, as diffctl's UNet does without labels."""

    def __init__(self, unet: nn.Module, null_label: int | None = None):
        super().__init__()
        self.unet, self.null_label = unet, null_label

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = None if self.null_label is None else torch.full((len(x),), self.null_label, dtype=torch.long, device=x.device)
        return self.unet(x, t, class_labels=y).sample


def diffusers_peer(model_cfg, shape, ours: nn.Module) -> tuple[DiffusersAdapter, list]:
    """diffusers' UNet2DModel in the layout of diffctl's UNet ``ours`` (built from ``model_cfg`` for ``shape``): the same
    widths, levels, res blocks per level, attention levels (and the middle block's), dropout, time embedding and class
    table.  Returns (the adapter, what differs).  UNet2DModel has one attention head size and one GroupNorm group count
    for the whole net, where diffctl has ``heads`` heads at every attention and the groups of each width: the head size
    of the middle block and the groups of the base width are used, and the differences named."""
    from diffusers import UNet2DModel

    channels, mults = model_cfg.channels, list(model_cfg.channel_mult)
    attention, res = [], shape[1]
    for _ in mults:
        attention.append(res in model_cfg.attn_resolutions)
        res //= 2
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    norms = [m for m in ours.modules() if isinstance(m, nn.GroupNorm)]
    groups = min(m.num_groups for m in norms)  # the base width's: it divides every width (all are multiples of it)
    heads = model_cfg.heads
    head_dim = channels * mults[-1] // heads  # the middle block's attention (always there)
    num_classes = model_cfg.get("num_classes", 0)
    kwargs = dict(sample_size=shape[1], in_channels=shape[0], out_channels=shape[0], block_out_channels=tuple(channels * m for m in mults),
                  layers_per_block=model_cfg.num_res_blocks, down_block_types=down,
                  up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)), dropout=model_cfg.dropout,
                  attention_head_dim=head_dim, norm_num_groups=groups, num_class_embeds=num_classes + 1 if num_classes else None)
    differences = []
    by_width = sorted({(m.num_channels, m.num_groups) for m in norms})
    if any(g != groups for _, g in by_width):
        differences.append(f"GroupNorm groups: ours {', '.join(f'{g} at {w} ch' for w, g in by_width)}; peer {groups} everywhere")
    attn_widths = sorted({channels * m for m, a in zip(mults, attention) if a} | {channels * mults[-1]})
    if len(attn_widths) > 1:
        differences.append(f"attention heads: ours {heads} at every width; peer head size {head_dim} "
                           f"({', '.join(f'{w // head_dim} at {w} ch' for w in attn_widths)})")
    torch.manual_seed(0)
    return DiffusersAdapter(UNet2DModel(**kwargs), num_classes if num_classes else None), differences


# --- --trainer -------------------------------------------------------------------------------------
def trainer_dataset(shape: tuple, folder: Path) -> list:
    """Overrides for a dataset of ``shape``: digits for [1, 8, 8]; otherwise a folder of random 8-bit images of that
    shape written under ``folder`` (dataset=folder: 1 or 3 channels, square)."""
    if shape == (1, 8, 8):
        return ["dataset=digits"]
    c, size, _ = shape
    import numpy as np
    from PIL import Image

    (folder / "noise").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):  # every 10th is the test split: 18 train, 2 test
        pixels = rng.integers(0, 256, (size, size) if c == 1 else (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "noise" / f"{i:02d}.png")
    return ["dataset=folder", f"dataset.root={folder}", f"dataset.image_size={size}", f"dataset.grayscale={str(c == 1).lower()}"]


def build_trainer(args, shape: tuple, precision: str, device: torch.device, calls: int, work: Path):
    """A ``diffctl.trainer.Trainer`` on the composed train config (as ``diffctl train`` composes it) with the bench's
    model, batch, precision, device, compile and channels_last, and every cadence off (logs, held-out loss,
    checkpoints, sample grids): ``train_step()`` runs nothing else."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from diffctl.config import register_schemas
    from diffctl.errors import UsageError
    from diffctl.trainer import Trainer

    overrides = [f"model={args.model}", *trainer_dataset(shape, work / "data"), f"device={device}", f"trainer.batch_size={args.batch}",
                 f"trainer.precision={precision}", f"trainer.compile={args.compile or 'false'}",
                 f"trainer.channels_last={str(args.channels_last).lower()}", f"trainer.steps={calls}", "trainer.log_every=0",
                 "trainer.eval_every=0", "trainer.ckpt_every=0", "trainer.sample_every=0", "logger=none",
                 f"paths.output_root={work / 'outputs'}", f"paths.cache_dir={work / 'cache'}"]
    GlobalHydra.instance().clear()
    register_schemas()
    with initialize_config_module("diffctl.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    (work / "run").mkdir()
    try:
        trainer = Trainer(cfg, work / "run")
    except UsageError as e:  # a dataset, device or precision the Trainer refuses
        _fail(f"--trainer: {e}")
    if tuple(trainer.data.shape) != shape:
        _fail(f"--trainer: the dataset is {list(trainer.data.shape)}, not the bench's {list(shape)}")
    return trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet_small")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the step (network + loss) in this mode: default, reduce-overhead (CUDA graphs), max-autotune")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--peer", choices=["diffusers"], default=None,
                   help="also time diffusers' UNet2DModel in the same layout through the same training step")
    p.add_argument("--trainer", action="store_true", help="also time diffctl's Trainer.train_step() on the same settings")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from diffctl.config import load_option
    from diffctl.core.diffusion import Denoiser
    from diffctl.core.schedules import make_alpha_bar
    from diffctl.generation import generate
    from diffctl.models import build_model, count_parameters
    from diffctl.runtime import autocast, fast_math, resolve_device, resolve_precision

    cfg = load_option("model", args.model)
    shape = (args.channels, args.size, args.size)
    if args.peer == "diffusers":
        try:
            import diffusers  # noqa: F401
        except ImportError:
            _fail("--peer diffusers needs the diffusers package: pip install 'diffctl[diffusers]'")
        if cfg.arch != "unet":
            _fail(f"--peer diffusers rebuilds a model of arch unet in diffusers' UNet2DModel; --model {args.model} is arch {cfg.arch}")
    if args.trainer and not (shape == (1, 8, 8) or args.channels in (1, 3)):
        _fail(f"--trainer: no dataset has the shape {list(shape)} (digits is 1x8x8, dataset=folder images 1 or 3 channels)")

    device = resolve_device(args.device)
    fast_math(device, True)
    precision = resolve_precision(args.precision, device)
    work = tempfile.TemporaryDirectory(prefix="diffctl-bench-")  # the trainer's data and run folder; removed at exit
    trainer = build_trainer(args, shape, precision, device, 3 + args.steps, Path(work.name)) if args.trainer else None  # fails early
    torch.manual_seed(0)
    net = build_model(cfg, shape).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net, mode=args.compile) if args.compile else net
    ab = make_alpha_bar("cosine", 1000)
    ab_dev = ab.to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x0 = torch.rand(args.batch, *shape, device=device).mul(2).sub(1).contiguous(memory_format=fmt)
    steps = {"ours": make_train_step(net, x0, ab, device, precision, args.compile)}

    compile_s = time.perf_counter()
    steps["ours"]()  # the first call compiles (with --compile)
    _sync(device)
    compile_s = time.perf_counter() - compile_s
    flops_per_image = forward_flops(net, x0[:1], device, precision)

    sampler_cfg = OmegaConf.merge(load_option("sampler", "ddim"), {"spacing": "trailing"})
    denoise = Denoiser(forward.eval() if not args.compile else forward, ab_dev, "eps")

    def sample():
        with autocast(device, precision):
            generate(denoise, ab, sampler_cfg, args.sample_steps, args.sample_batch, shape, batch_size=args.sample_batch, device=device)

    sample_s = _timed(sample, device, 1, 2)
    net.train()  # sampling put it in eval mode

    peer = {}
    if args.peer == "diffusers":
        import diffusers

        peer_net, differences = diffusers_peer(cfg, shape, net)
        peer_net = peer_net.to(device)
        if args.channels_last:
            peer_net = peer_net.to(memory_format=torch.channels_last)
        steps["peer"] = make_train_step(peer_net, x0, ab, device, precision, args.compile)
        steps["peer"]()  # the first call compiles (with --compile)
        peer = {"peer": f"diffusers {diffusers.__version__} UNet2DModel", "peer_parameters": count_parameters(peer_net),
                "peer_layout_differences": differences}
    if trainer is not None:
        steps["trainer"] = trainer.train_step  # what it returns is not used
        steps["trainer"]()  # the first call compiles (with --compile)
    seconds = _timed_rounds(steps, device, args.steps)
    train_s = seconds["ours"]
    rates = {}
    if "trainer" in seconds:
        rates.update(trainer_img_per_s=round(args.batch / seconds["trainer"], 1), trainer_overhead=round(1 - train_s / seconds["trainer"], 3))
    if "peer" in seconds:
        rates.update(peer_train_img_per_s=round(args.batch / seconds["peer"], 1), train_speedup_vs_peer=round(seconds["peer"] / train_s, 3))
        if "trainer" in seconds:
            rates["trainer_speedup_vs_peer"] = round(seconds["peer"] / seconds["trainer"], 3)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    ceiling = matmul_ceiling(device, dtype)
    train_ips, sample_ips = args.batch / train_s, args.sample_batch / sample_s
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": args.model, "parameters": count_parameters(net), "shape": list(shape),
        "precision": precision, "compile": args.compile or False, "channels_last": args.channels_last, "batch": args.batch,
        "train_img_per_s": round(train_ips, 1), **rates, "sample_img_per_s": round(sample_ips, 1), "sample_steps": args.sample_steps,
        "forward_gflops_per_img": round(flops_per_image / 1e9, 4), "matmul_tflops": round(ceiling / 1e12, 3),
        "train_mfu": round(3 * flops_per_image * train_ips / ceiling, 4),
        **({"trainer_mfu": round(3 * flops_per_image * rates["trainer_img_per_s"] / ceiling, 4)} if "trainer_img_per_s" in rates else {}),
        "sample_mfu": round(flops_per_image * args.sample_steps * sample_ips / ceiling, 4),
        "first_step_s": round(compile_s, 2), **peer,
    }
    work.cleanup()
    width = max(map(len, record))
    for k, v in record.items():
        print(f"{k:<{width}}  {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
