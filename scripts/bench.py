"""Training and sampling throughput, and model FLOP utilisation against a measured matmul ceiling.

    python scripts/bench.py                                   # unet_small on 8x8 digits-shaped data
    python scripts/bench.py --model unet_base --size 32 --channels 3 --batch 128 --precision bf16 \\
        --device cuda --compile --channels-last --out docs/bench_h200.json

Measured after warm-up, on random data of the given shape with the real training objective (eps
loss at uniform timesteps of the cosine schedule, AdamW, gradient clipping) and the real sampler
(DDIM through D(x, sigma)):
  train img/s   forward + backward + optimiser step, images per second
  sample img/s  images per second for ``--sample-steps`` DDIM steps (NFE = steps)
  FLOPs/img     the network's forward FLOPs per image (torch.utils.flop_counter); training costs ~3x
  MFU           achieved model FLOP/s (3x forward for training) / the FLOP/s of a large dense matmul
                measured on the same device and dtype: the ceiling this hardware reaches in practice
Prints a table; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from omegaconf import OmegaConf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n x n matmul, n = 4096 on CUDA and 1024 on CPU."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, 2, 10 if device.type == "cuda" else 4)
    return 2 * n**3 / seconds


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
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from diffctl.config import load_option
    from diffctl.core.diffusion import Denoiser
    from diffctl.core.losses import sigmas_uniform_t, weight_simple
    from diffctl.core.schedules import make_alpha_bar
    from diffctl.generation import generate
    from diffctl.models import build_model, count_parameters
    from diffctl.runtime import autocast, fast_math, resolve_device, resolve_precision

    device = resolve_device(args.device)
    fast_math(device, True)
    precision = resolve_precision(args.precision, device)
    cfg = load_option("model", args.model)
    shape = (args.channels, args.size, args.size)
    torch.manual_seed(0)
    net = build_model(cfg, shape).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if args.compile else net
    ab = make_alpha_bar("cosine", 1000)
    ab_dev = ab.to(device)
    denoiser = Denoiser(forward, ab_dev, "eps")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x0 = torch.rand(args.batch, *shape, device=device).mul(2).sub(1).contiguous(memory_format=fmt)

    def train_step():
        sigma = sigmas_uniform_t(args.batch, ab).to(device)
        noise = torch.randn_like(x0)
        with autocast(device, precision):
            loss = denoiser.loss(x0, sigma, noise, weight_simple).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    compile_s = time.perf_counter()
    train_step()  # the first call compiles (with --compile)
    _sync(device)
    compile_s = time.perf_counter() - compile_s
    train_s = _timed(train_step, device, 2, args.steps)

    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter, autocast(device, precision):
        net(x0[:1], torch.zeros(1, device=device))
    flops_per_image = counter.get_total_flops()

    sampler_cfg = OmegaConf.merge(load_option("sampler", "ddim"), {"spacing": "trailing"})
    denoise = Denoiser(forward.eval() if not args.compile else forward, ab_dev, "eps")

    def sample():
        with autocast(device, precision):
            generate(denoise, ab, sampler_cfg, args.sample_steps, args.sample_batch, shape, batch_size=args.sample_batch, device=device)

    sample_s = _timed(sample, device, 1, 2)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    ceiling = matmul_ceiling(device, dtype)
    train_ips, sample_ips = args.batch / train_s, args.sample_batch / sample_s
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "model": args.model, "parameters": count_parameters(net), "shape": list(shape),
        "precision": precision, "compile": args.compile, "channels_last": args.channels_last, "batch": args.batch,
        "train_img_per_s": round(train_ips, 1), "sample_img_per_s": round(sample_ips, 1), "sample_steps": args.sample_steps,
        "forward_gflops_per_img": round(flops_per_image / 1e9, 4), "matmul_tflops": round(ceiling / 1e12, 3),
        "train_mfu": round(3 * flops_per_image * train_ips / ceiling, 4),
        "sample_mfu": round(flops_per_image * args.sample_steps * sample_ips / ceiling, 4),
        "first_step_s": round(compile_s, 2),
    }
    width = max(map(len, record))
    for k, v in record.items():
        print(f"{k:<{width}}  {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
