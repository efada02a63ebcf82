"""``diffctl train``: the training loop (AMP, EMA, clipping, checkpoints, metrics, sample grids)."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .data import load_dataset
from .data.order import EpochOrder
from .data.stream import StepBatches, loader, next_batch
from .errors import Interrupted, UsageError
from .health import LossWatch, StepTally, Window, limit_cause, non_finite_message
from .io.checkpoint import RESUMABLE, checkpoint_name, list_checkpoints, load_checkpoint, prune_checkpoints, require, save_checkpoint
from .io.rundir import CKPT_DIR, MetricsLog
from .latent import latent_dataset, latent_space
from .loggers import Loggers
from .models import count_parameters
from .optim import EMA, lr_lambda
from .progress import BAR_LINE, progress_bar
from .resume import StopRequest, check_same_run, continue_run, pin_references, resume_path, rng_state, set_rng_state, step_seed
from .runtime import autocast, compile_mode, cpu_has_fast_bf16, distributed_from_env, fast_math, init_distributed, resolve_device, resolve_precision
from .tasks import TASKS
from .validation import check_streaming, check_training

log = logging.getLogger("diffctl.train")


class Trainer:
    """Holds the state of one training run; ``fit()`` runs it to ``trainer.steps``."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.dist = distributed_from_env()
        self.device = init_distributed(self.dist, resolve_device(cfg.device))
        if self.dist.launched:
            import torch.distributed as dist

            shared = [str(self.run_dir)]
            dist.broadcast_object_list(shared, src=0)  # every rank works in rank 0's run folder
            self.run_dir = Path(shared[0])
        fast_math(self.device, cfg.trainer.tf32)
        self.precision = resolve_precision(cfg.trainer.precision, self.device)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("trainer.precision=bf16 on a CPU without native bf16 kernels (no AVX-512 or AMX): several times "
                        "slower than trainer.precision=fp32, which precision=auto picks here")
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator(self.device)  # the batch's draws, on the device, seeded by (seed, step) each step
        # the checkpoint this run continues from, and the other runs it names resolved once ('latest' moves as runs are trained)
        self.resume = resume_path(cfg, self.run_dir)
        saved = self._resumed_state()
        self.references = pin_references(cfg, saved, self.resume)
        self.data = load_dataset(cfg.dataset, stream=True)
        self.latent = pixels = None  # latent diffusion: the autoencoder's space the data is seen through, and the data in pixels
        if cfg.task == "controlnet":
            from .control import base_autoencoder

            if cfg.latent.autoencoder:
                raise UsageError("task=controlnet works in its base run's space (its latent space, for a latent base): drop latent.autoencoder")
            cfg.latent.autoencoder = base_autoencoder(cfg)
        check_streaming(cfg, self.data)
        if cfg.latent.autoencoder:
            if cfg.task not in ("diffusion", "superres", "controlnet"):
                raise UsageError(f"latent.autoencoder trains a diffusion model in an autoencoder's latent space; task={cfg.task} does not use it")
            self.latent = latent_space(cfg.latent.autoencoder, Path(cfg.paths.output_root), self.device, self.data)
            before = (saved or {}).get("latent")
            if before is not None:  # a resumed run keeps its scale (measured on other hardware, it could differ in the last digits)
                self.latent.scale = float(before["scale"])
            pixels, self.data = self.data, latent_dataset(self.latent, self.data, Path(cfg.paths.cache_dir), measure_scale=before is None)
        if saved is not None and (saved.get("latent") or {}).get("sha256") != (self.latent.sha256 if self.latent is not None else None):
            raise UsageError(f"cannot resume from {self.resume}: it was trained in {'the latent space of ' + saved['latent']['autoencoder'] if saved.get('latent') else 'pixels'}, "
                             f"and this run would train in {'the latent space of ' + self.latent.path if self.latent is not None else 'pixels'}; "
                             f"the data space may not change on resume")
        check_training(cfg, self.data, self.device, self.precision, self.dist.world, pixels)
        # what is learnt: network, per-item draws, loss, pictures
        self.task = TASKS[cfg.task](cfg, self.data, self.device, pixels=pixels)
        if self.latent is not None:
            self.task.decode = self.latent.decode  # its pictures in pixels
        self.train_y = self.data.train_labels.to(self.device) if self.task.labels else None
        # the data order: each epoch a new shuffle, a function of (seed, step); images gathered on the device, or streamed
        self.order = EpochOrder(cfg.seed, len(self.data.train), self.device)
        self.train_x = self.data.train.to(self.device) if not self.data.streamed else None
        self.batches = None  # streaming: the DataLoader's batches, from the step training starts at
        self.net = self.task.build().to(self.device)
        self.channels_last = cfg.trainer.channels_last and len(self.data.shape) == 3
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = EMA(self.net, cfg.trainer.ema_decay)
        self.forward = self.net  # what training calls: the network, wrapped for DDP and/or compiled
        if self.dist.launched:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = self.ddp = DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # the (wrapped) network behind what the loss calls: for diffusion the preconditioning that sampling and evaluation use too
        self.preconditioned = self.task.wrap(self.forward)
        sigma_max = float(((1 - self.task.alpha_bar[-1]) / self.task.alpha_bar[-1]).sqrt()) if cfg.task in ("diffusion", "superres", "controlnet") else 0.0
        if cfg.model.prediction == "eps" and self.data.levels is None and sigma_max > 100:
            log.warning("model.prediction=eps on unclipped %s with schedule=%s (sigma_max %.3g): eps-prediction's x0 estimate is eps's error "
                        "times sigma, so sampling blows up at the first steps; use model.prediction=v (or schedule=scaled_linear, "
                        "Stable Diffusion's, sigma_max 14.6)", "latents" if self.latent is not None else "continuous data", cfg.schedule.name,
                        sigma_max)
        if cfg.schedule.zero_terminal_snr and cfg.model.prediction == "eps" and cfg.task in ("diffusion", "superres"):
            log.warning("schedule.zero_terminal_snr with model.prediction=eps: eps is undefined at zero SNR (Lin et al. 2024); use model.prediction=v")
        o = cfg.optim
        # fused: one kernel for the whole update, and it skips a step flagged on the device (found_inf) without a host sync
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(o, cfg.trainer.steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        # the steps since the host last looked: losses since the last metrics line (checkpointed: a resumed run logs the same
        # means), skipped steps, non-finite steps in a row; kept on the device, read at log lines, checkpoints and stops
        self.tally = StepTally(self.device, cfg.trainer.max_nonfinite)
        self.pending = Window()  # what the host has read of it and not yet logged
        mode = compile_mode(cfg.trainer.compile)
        self.micro_loss = self._micro_loss if mode is None else torch.compile(self._micro_loss, mode=mode)
        self.branch = 0  # which history of this run folder the step is on (a resume from an older checkpoint or with a new lr starts one)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.watch: LossWatch | None = None  # made at the first log line
        self.loggers = Loggers(None, self.run_dir, 0, "")  # fit() opens the chosen ones (rank 0), once it knows its first step
        self.ckpt_dir = self.run_dir / CKPT_DIR
        self._heldout_batch = None

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.net.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.opt.state_dict(),
            "lr_scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "data_shape": list(self.data.shape),
            "num_classes": self.data.num_classes,
            "data_levels": self.data.levels,  # quantisation levels of the pixels (None: continuous data)
            "loss_window": {"sum": self.pending.loss_sum, "n": self.pending.applied, "skipped": self.pending.skipped},
            "nonfinite": self.pending.in_a_row,
            "branch": self.branch,
            **({"latent": self.latent.record()} if self.latent is not None else {}),
            **({"cond": self.task.cond.record()} if self.task.cond is not None else {}),
            "references": self.references,
        }

    def save(self) -> Path:
        """Checkpoint this step (never non-finite weights: the last good checkpoint stays the newest); rank 0 writes.
        Call ``look()`` first: the checkpoint holds the window it read."""
        if not all(torch.isfinite(p).all() for p in [*self.net.parameters(), *self.ema.model.parameters()]):
            raise UsageError(f"the weights are not finite at step {self.step}: not checkpointed, the last good checkpoint is kept; "
                             f"{self.recovery()}")
        if not self.dist.main:
            return self.ckpt_dir / checkpoint_name(self.step)
        path = save_checkpoint(self.ckpt_dir / checkpoint_name(self.step), self.state())
        prune_checkpoints(self.ckpt_dir, self.cfg.trainer.keep_last)
        return path

    def recovery(self) -> str:
        """What to run after a divergence: resume from the last good checkpoint with a lower learning rate."""
        return (f"resume from the last good checkpoint with a lower learning rate: diffctl train resume={self.run_dir} "
                f"optim.lr={self.cfg.optim.lr / 10:g} (trainer.grad_clip and trainer.precision=fp32 may change on resume too)")

    def _resumed_state(self) -> dict | None:
        """The checkpoint to resume from, read once (on CPU: RNG states must stay there; load_state_dict moves weights)."""
        self._saved = None if self.resume is None else load_checkpoint(self.resume)
        if self._saved is not None:
            require(self._saved, self.resume, RESUMABLE)
        return self._saved

    def load(self, path: Path) -> dict:
        """Restore the state of checkpoint ``path``; returns the trajectory-changing options that differ (a new branch)."""
        state = self._saved if path == self.resume and self._saved is not None else load_checkpoint(path)
        self._saved = None
        require(state, path, RESUMABLE)
        changed = check_same_run(state["config"], self.cfg, path)
        try:
            self.net.load_state_dict(state["model"])
            self.ema.model.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["lr_scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UsageError(f"cannot resume from {path}: its state does not fit this config ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.ema.updates = state["ema_updates"]
        self.step = state["step"]
        window = state.get("loss_window", [])  # {"sum", "n", "skipped"}; a list of the losses in checkpoints before 2026-11-30
        window = window if isinstance(window, dict) else {"sum": sum(window), "n": len(window)}
        self.pending = Window(window["sum"], window["n"], window.get("skipped", 0), in_a_row=state.get("nonfinite", 0))
        self.tally.restore(self.pending.in_a_row)
        self.branch = state.get("branch", 0)
        if "optim.lr" in changed:  # the schedule keeps its shape (warm-up, decay) around the new peak
            lr = self.cfg.optim.lr
            self.sched.base_lrs = [lr for _ in self.opt.param_groups]
            for group, f in zip(self.opt.param_groups, self.sched.lr_lambdas):
                group["initial_lr"], group["lr"] = lr, lr * f(self.sched.last_epoch)
        before = state["config"].get("trainer", {}).get("steps")
        if before is not None and before != self.cfg.trainer.steps:
            log.warning("trainer.steps changed from %s to %d on resume: the learning-rate schedule (warm-up, then %s) now spans %d steps",
                        before, self.cfg.trainer.steps, self.cfg.optim.decay, self.cfg.trainer.steps)
        return changed

    # --- the loop ------------------------------------------------------------------------------
    def draw(self) -> dict:
        """This step's global batch ``{"x0": images, and the task's per-item draws}``: the items of the epoch order at this
        step (``data/order.py``; gathered on the device, or streamed), and the per-item draws on the device from a generator
        seeded by (seed, step).  A step's data is a function of the run's seed and the step alone, so a resumed run, on any
        device, draws what the uninterrupted one drew there (each device's generator has its own stream)."""
        n, g, dev = self.cfg.trainer.batch_size, self.gen, self.device
        g.manual_seed(step_seed(self.cfg.seed, self.step))
        idx = self.order(self.step, n)
        x0 = self.train_x[idx] if self.train_x is not None else self.streamed(n)
        if self.data.hflip:  # augmentation: each image mirrored with probability 1/2
            flip = torch.rand(n, generator=g, device=dev) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return {"x0": x0, **self.task.draw(g, x0, self.train_y[idx] if self.train_y is not None else None, index=idx)}

    def streamed(self, n: int) -> torch.Tensor:
        """The images of this step's global batch of ``n``, read from their files by a DataLoader's workers (the same items as
        ``order``'s).  Under torchrun a rank reads only its share and places it in the global batch's frame, where the draws
        of the whole batch are made as in memory: the rest, zeros, is sliced away before the loss."""
        if self.batches is None:
            sampler = StepBatches(len(self.data.train), self.cfg.seed, n, self.step, self.cfg.trainer.steps, self.dist.rank, self.dist.world)
            self.batches = iter(loader(self.data.train, sampler, self.cfg.dataset.workers, pin=self.device.type == "cuda"))
        share = next_batch(self.batches).to(self.device, non_blocking=True)
        if not self.dist.launched:
            return share
        x0 = torch.zeros((n, *share.shape[1:]), device=self.device)
        x0[self.dist.rank * n // self.dist.world: (self.dist.rank + 1) * n // self.dist.world] = share
        return x0

    def _micro_loss(self, batch: dict) -> torch.Tensor:
        """The mean loss of a micro-batch: the network behind the preconditioning, and the loss (what trainer.compile compiles)."""
        with autocast(self.device, self.precision):
            return self.task.loss(self.preconditioned, batch).mean()

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step; returns (loss, gradient norm, whether it was applied) as tensors on the device, and
        never waits for it.  A non-finite loss or gradient norm skips the update (weights, optimiser and EMA untouched;
        fp16's GradScaler lowers its scale), decided on the device as GradScaler does: the fused optimiser is told
        ``found_inf``.  The step still counts, so data order and LR schedule stay those of the run.

        Every rank of a torchrun job draws the same global batch (indices, noise levels, noise, flips,
        dropped labels) from the same generators and trains on its own contiguous share of it, so N
        processes follow the trajectory of one process with the same global batch.  ``trainer.accumulate``
        splits each share into micro-batches whose gradients add up to the share's: less memory, the same step."""
        batch = self.draw()
        if self.dist.launched:
            n = len(batch["x0"])
            share = slice(self.dist.rank * n // self.dist.world, (self.dist.rank + 1) * n // self.dist.world)
            batch = {key: v[share] for key, v in batch.items()}
        if self.channels_last:
            batch = {key: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for key, v in batch.items()}
        self.opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        n, k = len(batch["x0"]), self.cfg.trainer.accumulate
        bounds = [i * n // k for i in range(k + 1)]
        for i in range(k):  # trainer.accumulate micro-batches, gradients summed: the same step as one batch
            part = slice(bounds[i], bounds[i + 1])
            with contextlib.nullcontext() if i == k - 1 or not self.dist.launched else self.ddp.no_sync():  # DDP: all-reduce once, at the last
                micro = self.micro_loss({key: v[part] for key, v in batch.items()}) * ((part.stop - part.start) / n)
                self.scaler.scale(micro).backward()
            loss += micro.detach().float()
        if self.dist.launched:  # every rank decides on the same (global) loss
            import torch.distributed as dist

            dist.all_reduce(loss)
            loss /= self.dist.world
        self.scaler.unscale_(self.opt)  # fp16: the true gradients (an overflow shows as a non-finite norm)
        clip = self.cfg.trainer.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip if clip > 0 else float("inf"))
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.opt.found_inf = (~ok).float()  # the fused AdamW leaves weights, moments and step count as they were where set
        self.opt.step()
        del self.opt.found_inf
        self.scaler.update()  # fp16: lowers the scale after an overflow, on the device
        self.ema.update(self.net, ok)
        with warnings.catch_warnings():  # torch warns that the schedule stepped before the optimiser (when it cannot tell)
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()
        self.step += 1
        self.tally.add(self.step, loss, grad_norm, ok)
        return loss, grad_norm, ok

    def look(self, steps: int) -> Window:
        """Read what the device tallied over the last ``steps`` steps (the one host synchronisation, at log lines,
        checkpoints and stops); warns of skipped steps and stops the run after ``trainer.max_nonfinite`` in a row."""
        w = self.tally.read()
        self.pending = self.pending.then(w)
        message = non_finite_message(w, steps, self.step - steps + 1)
        if message:
            log.warning("%s (trainer.max_nonfinite=%d)", message, self.cfg.trainer.max_nonfinite)
        if w.limit_step >= 0:
            last = list_checkpoints(self.ckpt_dir)  # all before the limit: a checkpoint step looks before it saves
            kept = f"the last good checkpoint {last[-1]} is kept" if last else "no checkpoint was written"
            raise UsageError(f"{self.tally.limit} non-finite steps in a row, the last at step {w.limit_step} (non-finite {limit_cause(w)}): "
                             f"stopped; {kept}. " + (self.recovery() if last else "Start again with a lower optim.lr, trainer.grad_clip or trainer.precision=fp32"))
        return w

    def snapshot(self) -> Path | None:
        """The task's picture of the EMA model at this step in ``samples/`` (rank 0): its samples, a classifier's test
        accuracy against noise, an autoencoder's reconstructions; what the task measures with it is logged too."""
        if not self.dist.main:
            return None
        path, tag, record = self.task.snapshot(self.ema.model, self.step, self.run_dir / "samples")
        if record:
            self.metrics.write(step=self.step, **record)
            self.loggers.scalars(self.step, record)
        self.loggers.image(self.step, tag, path)
        return path

    @torch.no_grad()
    def heldout_loss(self, net: torch.nn.Module | None = None, common: bool = False) -> float | None:
        """The training objective of the current network (or ``net``) on a fixed batch of the test split (``trainer.eval_batch``
        items) at fixed noise levels and noise (``common``: the task's ``common_loss`` instead, None if it has none): the
        same batch every time, drawn from a generator of its own, so the run's own draws (and a resume's bit-exactness) are
        untouched.  Every rank computes it (no collective)."""
        if self._heldout_batch is None:
            g = torch.Generator().manual_seed(self.cfg.seed + 1)
            n = min(len(self.data.test), self.cfg.trainer.eval_batch)
            idx = torch.randperm(len(self.data.test), generator=g)[:n]
            x0, y = self.data.test[idx], self.data.test_labels[idx] if self.task.labels else None
            batch = {"x0": x0, **self.task.draw(g, x0, y, train=False, index=idx)}
            self._heldout_batch = {key: v.to(self.device) for key, v in batch.items()}
        net = net if net is not None else self.net  # the raw network (not DDP's or torch.compile's wrapper), so one rank alone may call it
        net.eval()  # no dropout
        try:
            with autocast(self.device, self.precision):
                loss = (self.task.common_loss if common else self.task.loss)(self.task.wrap(net), self._heldout_batch)
        finally:
            net.train()
        return None if loss is None else loss.float().mean().item()

    def watch_loss(self, loss: float | None) -> None:
        """Warn (once) when the logged loss shows a collapse to predicting zero or a divergence, with the likely cause."""
        if self.watch is None:  # the reference: the held-out loss of a network that outputs zero
            zero = self.task.zero_net()
            if zero is None:
                return
            self.watch = LossWatch(self.heldout_loss(zero), after=max(self.cfg.optim.warmup_steps, 100))
        warning = self.watch(self.step, loss)
        if warning:
            lr = self.cfg.optim.lr
            log.warning("%s. Likely cause: optim.lr=%g is too high for this %.2gM-parameter network; start again with optim.lr=%g, or resume "
                        "from a checkpoint before the trouble with it (diffctl train resume=<checkpoint file> optim.lr=%g)",
                        warning, lr, count_parameters(self.net) / 1e6, lr / 10, lr / 10)

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:  # a streaming run's DataLoader workers end now, also when an error's traceback still holds the iterator:
            batches, self.batches = self.batches, None  # left to the garbage collector, its worker took 5 s to join
            getattr(batches, "_shutdown_workers", lambda: None)()

    def _fit(self) -> dict:
        tc = self.cfg.trainer
        resume = self.resume
        if resume is not None:
            changed = self.load(resume)
            if self.dist.main:
                self.branch = continue_run(self.run_dir, self.metrics, self.step, self.branch, changed, resume)
            self.metrics.branch = self.branch
            log.info("resumed from %s at step %d", resume, self.step)
        total, trained = count_parameters(self.net), sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        log.info("%s: %s parameters; %s on %s%s; dataset %s %s (%d train, %s levels%s)%s", self.task.title,
                 f"{total:,}" + (f" ({trained:,} trained, the rest frozen)" if trained < total else ""),
                 self.precision, self.device,
                 f" x {self.dist.world} processes (DDP, {'nccl' if self.device.type == 'cuda' else 'gloo'}, global batch {tc.batch_size})" if self.dist.launched else "",
                 self.data.name, list(self.data.shape), len(self.data.train), self.data.levels or "continuous", ", random flips" if self.data.hflip else "",
                 f"; streamed from its files by {self.cfg.dataset.workers} DataLoader workers" if self.data.streamed else "")
        if self.dist.main:
            self.loggers = Loggers(self.cfg.get("logger"), self.run_dir, self.step, OmegaConf.to_yaml(self.cfg))
        t0, logged_loss, heldout = time.perf_counter(), float("nan"), None
        window_t0, window_steps, unread, start_step = t0, 0, 0, self.step
        every_agree = tc.log_every or 100  # a torchrun job agrees on a stop request here (a collective: the host waits)
        with StopRequest() as stop, progress_bar("train", tc.steps, start=self.step, per_item=tc.batch_size) as advance:
            while self.step < tc.steps:
                self.train_step()
                window_steps, unread = window_steps + 1, unread + 1
                log_now = bool(tc.log_every and self.step % tc.log_every == 0) or self.step == tc.steps
                ckpt_now = bool(tc.ckpt_every and self.step % tc.ckpt_every == 0) and self.step < tc.steps
                if self.dist.launched and (log_now or ckpt_now or self.step % every_agree == 0):
                    import torch.distributed as dist  # every rank stops at the same step, whichever received the signal

                    flag = torch.tensor([stop.signum or 0], device=self.device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop.signum = int(flag.item()) or None
                stopping = stop.signum is not None and self.step < tc.steps
                if log_now or ckpt_now or stopping:  # the host reads the device's tally only here
                    window = self.look(unread)
                    unread = 0
                if log_now:
                    logged_loss = self.pending.loss if self.pending.applied else float("nan")
                    rate = round(window_steps * tc.batch_size / max(time.perf_counter() - window_t0, 1e-9), 1)
                    record = {"loss": self.pending.loss, "lr": self.sched.get_last_lr()[0],
                              "grad_norm": window.grad_norm if math.isfinite(window.grad_norm) else None, "img_per_s": rate,
                              "skipped": self.pending.skipped}
                    if tc.eval_every and (self.step % tc.eval_every == 0 or self.step == tc.steps):
                        record["heldout_loss"] = heldout = self.heldout_loss()
                        common = self.heldout_loss(common=True)  # comparable across schedules and objectives (diffctl compare)
                        if common is not None:
                            record["heldout_x0_mse"] = common
                    if self.dist.main:
                        self.watch_loss(record["loss"])
                        self.metrics.write(step=self.step, **record)
                        self.loggers.scalars(self.step, {**record, "branch": self.branch})
                        log.info("step %d/%d: loss %.4f, lr %.3g, %.0f img/s%s", self.step, tc.steps, logged_loss, record["lr"], rate,
                                 f", held-out loss {record['heldout_loss']:.4f}" if "heldout_loss" in record else "", extra=BAR_LINE)
                    self.pending = Window(in_a_row=window.in_a_row)
                    window_t0, window_steps = time.perf_counter(), 0
                advance(**({"loss": logged_loss, "lr": record["lr"]} if log_now else {}))
                if tc.sample_every and self.step % tc.sample_every == 0 and self.step < tc.steps:
                    self.snapshot()
                if ckpt_now:
                    recent = self.pending.loss if self.pending.applied else logged_loss
                    log.info("step %d: loss %.4f (mean since the last log line), checkpoint %s", self.step, recent, self.save().name)
                if stopping:
                    path = self.save()
                    raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} at step {self.step} of {tc.steps}; checkpoint {path}. "
                                      f"Resume with: diffctl train resume={self.run_dir}", 128 + stop.signum)
        seconds = time.perf_counter() - t0
        path = self.save()
        grid = self.snapshot()
        self.loggers.close()
        log.info("done: %d steps in %.1fs, final loss %.4f (mean of the last logged steps); checkpoint %s; samples %s",
                 self.step - start_step, seconds, logged_loss, path, grid)
        return {"steps": self.step, "seconds": seconds, "final_loss": logged_loss, "heldout_loss": heldout, "checkpoint": str(path),
                "grid": str(grid), "objective": heldout if heldout is not None else logged_loss}


def run_train(cfg: DictConfig, run_dir: Path) -> dict:
    trainer = Trainer(cfg, run_dir)
    try:
        return trainer.fit()
    finally:
        trainer.loggers.close()  # also when the run fails or stops: what the loggers buffered reaches the disk
        if trainer.dist.launched:
            import torch.distributed as dist

            dist.destroy_process_group()
