"""Does the fast test suite catch plausible bugs?  Plant each of MUTATIONS, one at a time, in a
temporary copy of the package, run the fast suite against it, and report which ones survive.

    python scripts/mutation_check.py                 # every mutation, 2 at a time
    python scripts/mutation_check.py --only ema      # those whose name or area contains "ema"
    python scripts/mutation_check.py --jobs 1 --list

A mutation is killed when a test fails (or the suite errors or times out).  The tests most likely to
catch it run first (``first``), then the whole fast suite, each with ``-x``, so a killed mutation
costs seconds and a survivor one fast-suite run.  Each job uses one thread (OMP/MKL), so two jobs do
not oversubscribe two cores.  Results go to stdout and, with --json, to a file; docs/testing.md has
the last full run.  A script, not part of CI: the whole list takes ~15-30 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutation:
    name: str
    area: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    first: tuple = ()  # test files to run before the rest of the fast suite


MUTATIONS = [
    # --- the preconditioned denoiser and the losses
    Mutation("network sees the clean image", "losses", "diffctl/core/diffusion.py",
             "x_in = b(c_in) * x0 + b(c_in * sigma) * noise", "x_in = b(c_in) * x0", ("tests/test_training.py", "tests/test_diffusion.py")),
    Mutation("v output scale sign", "losses", "diffctl/core/diffusion.py",
             "return sd2 / (sigma**2 + sd2), -sigma * sigma_data * c_in, c_in", "return sd2 / (sigma**2 + sd2), sigma * sigma_data * c_in, c_in",
             ("tests/test_training.py", "tests/test_diffusion.py")),
    Mutation("v skip ignores sigma_data", "losses", "diffctl/core/diffusion.py",
             "return sd2 / (sigma**2 + sd2), -sigma", "return 1 / (sigma**2 + sd2), -sigma", ("tests/test_diffusion.py",)),
    Mutation("input scale ignores sigma_data", "losses", "diffctl/core/diffusion.py",
             "c_in = 1 / (sigma**2 + sd2).sqrt()", "c_in = 1 / (sigma**2 + 1).sqrt()", ("tests/test_diffusion.py", "tests/test_training.py")),
    Mutation("eps output scale sign", "losses", "diffctl/core/diffusion.py",
             "return torch.ones_like(sigma), -sigma, c_in", "return torch.ones_like(sigma), sigma, c_in", ("tests/test_diffusion.py",)),
    Mutation("denoiser feeds x unscaled", "losses", "diffctl/core/diffusion.py",
             "out = self._net((c_in * x).float(), sigma, cond).to(x.dtype)", "out = self._net(x.float(), sigma, cond).to(x.dtype)",
             ("tests/test_diffusion.py",)),
    Mutation("simple weight not squared", "losses", "diffctl/core/losses.py",
             "return 1 / denoiser.coefficients(sigma)[1] ** 2", "return 1 / denoiser.coefficients(sigma)[1].abs()", ("tests/test_losses.py",)),
    Mutation("min-SNR clamps from below", "losses", "diffctl/core/losses.py",
             "return (1 / sigma**2).clamp(max=gamma)", "return (1 / sigma**2).clamp(min=gamma)", ("tests/test_losses.py",)),
    Mutation("EDM weight squared only below", "losses", "diffctl/core/losses.py",
             "return (sigma**2 + sd**2) / (sigma * sd) ** 2", "return (sigma**2 + sd**2) / (sigma * sd)", ("tests/test_losses.py",)),
    Mutation("EDM weight with a fixed sigma_data", "losses", "diffctl/core/losses.py",
             "sd = denoiser.sigma_data", "sd = 0.5", ("tests/test_losses.py",)),
    Mutation("lognormal mean and std swapped", "losses", "diffctl/core/losses.py",
             "* p_std + p_mean).exp()", "* p_mean + p_std).exp()", ("tests/test_losses.py",)),
    Mutation("training ignores sigma_data", "losses", "diffctl/tasks.py",
             "self.cfg.model.prediction, self.cfg.model.sigma_data)", "self.cfg.model.prediction)", ("tests/test_training.py",)),
    # --- schedules
    Mutation("cosine schedule offset dropped from the numerator", "schedules", "diffctl/core/schedules.py",
             "f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2", "f = torch.cos(t / (1 + s) * math.pi / 2) ** 2", ("tests/test_schedules.py",)),
    Mutation("trailing spacing off by one", "schedules", "diffctl/core/schedules.py",
             "* k) - 1).long()", "* k)).long().clamp(max=timesteps - 1)", ("tests/test_schedules.py",)),
    Mutation("karras spacing warped the wrong way", "schedules", "diffctl/core/schedules.py",
             "sig = (max_r + ramp * (min_r - max_r)) ** rho  # EDM eq. 5", "sig = (max_r + ramp * (min_r - max_r)) ** (rho - 1)",
             ("tests/test_schedules.py",)),
    Mutation("sigma_to_t interpolates the wrong neighbour", "schedules", "diffctl/core/schedules.py",
             "return (lo + w).to(sigma.dtype)", "return (hi - w).to(sigma.dtype)", ("tests/test_schedules.py",)),
    # --- samplers
    Mutation("ancestral noise ratio inverted", "samplers", "diffctl/core/samplers.py",
             "sigma_up = (eta * sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma)", "sigma_up = (eta * sigma * (sigma**2 - sigma_next**2).sqrt() / sigma_next)",
             ("tests/test_samplers.py",)),
    Mutation("DDPM posterior ratio not squared", "samplers", "diffctl/core/samplers.py",
             "r = (sigma_next / sigma) ** 2", "r = sigma_next / sigma", ("tests/test_samplers.py",)),
    Mutation("DDPM noise at the current level", "samplers", "diffctl/core/samplers.py",
             "x = x + (sigma_next * (1 - r).sqrt()) * noise(i)", "x = x + (sigma * (1 - r).sqrt()) * noise(i)", ("tests/test_samplers.py",)),
    Mutation("Heun's correction weights", "samplers", "diffctl/core/samplers.py",
             "x_next = x + (sigmas[i + 1] - sigma_hat) * (d + d_next) / 2", "x_next = x + (sigmas[i + 1] - sigma_hat) * (d + 3 * d_next) / 4",
             ("tests/test_oracle_samplers.py",)),
    Mutation("Heun churn not divided by the steps", "samplers", "diffctl/core/samplers.py",
             "gamma = min(S_churn / n, 2**0.5 - 1)", "gamma = min(S_churn, 2**0.5 - 1)", ("tests/test_oracle_samplers.py",)),
    Mutation("DPM-Solver++(2M) step ratio inverted", "samplers", "diffctl/core/samplers.py",
             "(h / h_last) * (x0 - old_x0)", "(h_last / h) * (x0 - old_x0)", ("tests/test_oracle_samplers.py",)),
    Mutation("DPM-Solver++ SDE noise variance", "samplers", "diffctl/core/samplers.py",
             "(-torch.expm1(-2 * eta_h)).sqrt()", "(-torch.expm1(-eta_h)).sqrt()", ("tests/test_oracle_samplers.py",)),
    Mutation("UniPC step ratios inverted", "samplers", "diffctl/core/samplers.py",
             "rks = [(lambdas[-1 - k] - l0) / h for k in range(1, order)]", "rks = [h / (lambdas[-1 - k] - l0) for k in range(1, order)]",
             ("tests/test_oracle_samplers.py",)),
    Mutation("UniPC first-order corrector weight", "samplers", "diffctl/core/samplers.py",
             "rhos = torch.tensor([0.5], dtype=b.dtype) if order == 1", "rhos = torch.tensor([1.0], dtype=b.dtype) if order == 1",
             ("tests/test_oracle_samplers.py",)),
    # --- EMA
    Mutation("EMA weighted the wrong way round", "ema", "diffctl/optim.py",
             "torch._foreach_lerp_(ema_p, p, [w] * len(p))", "torch._foreach_lerp_(p, ema_p, [w] * len(p))", ("tests/test_training.py",)),
    Mutation("EMA without warm-up", "ema", "diffctl/optim.py",
             "((1 + n) / (10 + n)).clamp(max=self.decay)", "(n * 0 + self.decay)", ("tests/test_training.py",)),
    # --- likelihood
    Mutation("decoder variance of the wrong step", "likelihood", "diffctl/core/likelihood.py",
             "_, logvar = posterior(alpha_bar, 1, x0, x_t)", "_, logvar = posterior(alpha_bar, 2, x0, x_t)", ("tests/test_likelihood.py",)),
    Mutation("posterior mean coefficient without sqrt", "likelihood", "diffctl/core/likelihood.py",
             "+ (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x_t", "+ (1 - beta) * (1 - a_prev) / (1 - a_t) * x_t", ("tests/test_likelihood.py",)),
    Mutation("prior mean without sqrt", "likelihood", "diffctl/core/likelihood.py",
             "kl = normal_kl(a.sqrt() * x0,", "kl = normal_kl(a * x0,", ("tests/test_likelihood.py",)),
    Mutation("KL divides by the wrong variance", "likelihood", "diffctl/core/likelihood.py",
             "(mean1 - mean2) ** 2 * torch.exp(-logvar2)", "(mean1 - mean2) ** 2 * torch.exp(-logvar1)", ("tests/test_likelihood.py",)),
    Mutation("dequantisation width added", "likelihood", "diffctl/core/likelihood.py",
             "return nll_nats / (dims * math.log(2.0)) - math.log2(2.0 / (levels - 1))", "return nll_nats / (dims * math.log(2.0)) + math.log2(2.0 / (levels - 1))",
             ("tests/test_likelihood.py",)),
    # --- guidance
    Mutation("classifier-free guidance around the conditional", "guidance", "diffctl/core/guidance.py",
             "out = uncond + scale * (cond - uncond)", "out = cond + scale * (cond - uncond)", ("tests/test_guidance.py",)),
    Mutation("classifier guidance with sigma, not sigma^2", "guidance", "diffctl/core/guidance.py",
             "return out + scale * s**2 * grad.to(x.dtype)", "return out + scale * s * grad.to(x.dtype)", ("tests/test_guidance.py",)),
    Mutation("inpainting noises the known region at the wrong level", "guidance", "diffctl/core/guidance.py",
             "x_in = m * (k + s * z) + (1 - m) * x", "x_in = m * k + (1 - m) * x", ("tests/test_guidance.py",)),
    Mutation("sampling ignores the checkpoint's prediction type", "sampling", "diffctl/runtime.py",
             "model.prediction, model.sigma_data), trained.alpha_bar", "\"eps\", model.sigma_data), trained.alpha_bar", ("tests/test_training.py",)),
    Mutation("sampling ignores the checkpoint's sigma_data", "sampling", "diffctl/runtime.py",
             "model.prediction, model.sigma_data), trained.alpha_bar", "model.prediction), trained.alpha_bar", ("tests/test_training.py",)),
    Mutation("sampling ignores ema=false", "sampling", "diffctl/runtime.py",
             "key = \"ema\" if ema and state.get(\"ema\") is not None else \"model\"", "key = \"ema\"", ("tests/test_training.py",)),
    # --- resume
    Mutation("resume forgets the RNG state", "resume", "diffctl/trainer.py",
             "            set_rng_state(state[\"rng\"])\n", "", ("tests/test_robustness.py",)),
    Mutation("a step's data depends on the run's history, not on (seed, step)", "resume", "diffctl/trainer.py",
             "g.manual_seed(step_seed(self.cfg.seed, self.step))", "pass", ("tests/test_robustness.py", "tests/test_fast_path.py")),
    Mutation("a skipped step still updates the weights", "nonfinite", "diffctl/trainer.py",
             "self.opt.found_inf = (~ok).float()", "self.opt.found_inf = (ok & ~ok).float()", ("tests/test_fast_path.py", "tests/test_robustness.py")),
    Mutation("resume restarts the EMA count", "resume", "diffctl/trainer.py",
             "self.ema.updates = state[\"ema_updates\"]", "self.ema.updates = 0", ("tests/test_training.py", "tests/test_robustness.py")),
    Mutation("resume drops the pending loss window", "resume", "diffctl/trainer.py",
             "self.pending = Window(window[\"sum\"], window[\"n\"]", "self.pending = Window(0.0, 0", ("tests/test_robustness.py",)),
    Mutation("a new lr on resume is ignored", "resume", "diffctl/trainer.py",
             "self.sched.base_lrs = [lr for _ in self.opt.param_groups]", "pass", ("tests/test_reliability.py",)),
    Mutation("cross-attention reads the padding tokens", "cond", "diffctl/models/unet.py",
             "attn_mask=None if mask is None else mask[:, None, None, :]", "attn_mask=None", ("tests/test_prompting.py",)),
    Mutation("the text encoder attends to padding", "cond", "diffctl/models/context.py",
             "a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])",
             "a = F.scaled_dot_product_attention(q, k, v)", ("tests/test_prompting.py",)),
    Mutation("prompts are dropped when they should be kept", "cond", "diffctl/prompting.py",
             "return torch.where(hit.reshape", "return torch.where(~hit.reshape", ("tests/test_prompting.py",)),
    Mutation("guidance with prompts uses the prompt as its own null", "cond", "diffctl/core/guidance.py",
             "y_null = torch.as_tensor(null, device=x.device).to(y.dtype).expand_as(y)", "y_null = y", ("tests/test_prompting.py", "tests/test_guidance.py")),
    Mutation("the ControlNet base is not frozen", "control", "diffctl/models/controlnet.py",
             "self.base = base.requires_grad_(False)", "self.base = base", ("tests/test_control.py",)),
    Mutation("edges at a lower threshold", "control", "diffctl/control.py",
             "return ((gx**2 + gy**2).sqrt() > 2.0).float()", "return ((gx**2 + gy**2).sqrt() > 0.5).float()", ("tests/test_control.py",)),
    Mutation("super-resolution downsamples by the wrong factor", "superres", "diffctl/superres.py",
             "return F.avg_pool2d(x, factor)", "return F.avg_pool2d(x, factor) if factor > 2 else F.max_pool2d(x, factor)", ("tests/test_superres.py",)),
    Mutation("the discriminator trains the decoder", "autoencoder", "diffctl/models/autoencoder.py",
             "real, fake = d(x).float(), d(recon.detach()).float()", "real, fake = d(x).float(), d(recon).float()", ("tests/test_autoencoder.py",)),
]


def _copy(dest: Path) -> None:
    """The package, its configs and the tests, laid out so that ``PYTHONPATH=dest`` imports them."""
    shutil.copytree(ROOT / "diffctl", dest / "diffctl")
    shutil.copytree(ROOT / "configs", dest / "diffctl" / "configs")  # what the editable install maps diffctl.configs to
    shutil.copytree(ROOT / "tests", dest / "tests")
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def run_one(m: Mutation, timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="diffctl-mutant-") as tmp:
        dest = Path(tmp)
        _copy(dest)
        path = dest / m.file.replace("configs/", "diffctl/configs/")
        text = path.read_text()
        if text.count(m.old) != 1:
            return {"name": m.name, "area": m.area, "result": "not applied", "detail": f"found {text.count(m.old)} times in {m.file}"}
        path.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(dest), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        t0 = time.perf_counter()
        for stage in ([*m.first], ["tests"]) if m.first else (["tests"],):
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-o", "addopts=-ra", "-m", "not slow", "-p", "no:cacheprovider", *stage]  # (mutants run --jobs at once)
            try:
                proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"name": m.name, "area": m.area, "result": "killed", "detail": "timed out", "seconds": round(time.perf_counter() - t0)}
            if proc.returncode != 0:
                failed = [l.split(" ")[1] for l in proc.stdout.splitlines() if l.startswith("FAILED ") or l.startswith("ERROR ")]
                return {"name": m.name, "area": m.area, "result": "killed", "detail": (failed or [proc.stdout.strip().splitlines()[-1]])[0],
                        "seconds": round(time.perf_counter() - t0)}
        return {"name": m.name, "area": m.area, "result": "survived", "detail": "", "seconds": round(time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run the mutations whose name or area contains this")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per suite run")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name or args.only in m.area]
    if args.list:
        for m in chosen:
            print(f"{m.area:11} {m.name}")
        return
    print(f"{len(chosen)} mutations, {args.jobs} at a time", flush=True)
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda m: run_one(m, args.timeout), chosen):
            results.append(r)
            print(f"{r['result']:11} {r['area']:11} {r['name']}  [{r.get('seconds', 0)} s] {r['detail']}", flush=True)
    applied = [r for r in results if r["result"] != "not applied"]
    killed = sum(r["result"] == "killed" for r in applied)
    print(f"\nkilled {killed} of {len(applied)} ({100 * killed / max(1, len(applied)):.0f}%)"
          + "".join(f"\n  survived: {r['name']}" for r in applied if r["result"] == "survived")
          + "".join(f"\n  NOT APPLIED: {r['name']} ({r['detail']})" for r in results if r["result"] == "not applied"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
