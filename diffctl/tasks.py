"""What a training run learns (``task=``): the parts of ``diffctl train`` that depend on it.

The Trainer owns the loop (draws, accumulation, DDP, the device-side skip rule, EMA, checkpoints,
logs); a task owns the network it trains, the per-item extras each step draws besides the images, the
loss of a batch, the picture a snapshot draws, and the zero-output reference of ``LossWatch``:

    diffusion    a denoiser D(x, sigma) behind the preconditioning (sample grids)
    classifier   a noise-aware classifier of the dataset's classes, for classifier guidance (accuracy by noise level)
    autoencoder  a KL autoencoder of the images, the space latent diffusion works in (reconstructions, PSNR)
    superres     a denoiser that also reads the image's low-resolution copy (SR3; low-res | bicubic | samples | real)
    controlnet   a ControlNet on a frozen diffusion run, reading a control made from each image (control | samples | real)
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig

from .core.diffusion import Denoiser, NoisyClassifier
from .core.losses import LOSSES
from .core.registry import Registry
from .generation import Conditioning, class_labels, generate
from .io.images import save_grid
from .metrics.distances import chunked_frechet
from .metrics.reference import reference_classifier
from .models import AUTOENCODERS, build_model
from .models.autoencoder import KLAutoencoder, Reconstruction, psnr
from .optim import drop_labels
from .prompting import build_network, condition_of
from .runtime import schedule_alpha_bar
from .snapshots import accuracy_plot, sample_grid

log = logging.getLogger("diffctl.train")

TASKS = Registry("task")


class ZeroNet(torch.nn.Module):
    """A network that outputs zero (``classes`` logits of a classifier): the reference of ``LossWatch``."""

    def __init__(self, classes: int = 0):
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, *cond) -> torch.Tensor:
        return x.new_zeros(len(x), self.classes) if self.classes else torch.zeros_like(x)


# Noise levels inside every built-in schedule's range (linear 0.01-157, cosine 0.006-2e4, scaled_linear 0.03-14.6, edm
# 0.002-80), log-spaced: where the held-out x0 error of runs on different schedules is measured alike.
COMMON_SIGMAS = torch.logspace(math.log10(0.05), math.log10(10.0), 8, dtype=torch.float64)


class DiffusionTask:
    """A denoiser: per item a noise level, noise and (class-conditional) a label, dropped to the null label at
    ``trainer.cond_drop_prob``; the loss is ``Denoiser.loss`` with the configured weighting."""

    def __init__(self, cfg: DictConfig, data, device: torch.device, pixels=None):
        """``pixels``: a latent run's dataset in pixels (``data`` is its latents), which image conditions are made from."""
        self.cfg, self.data, self.device, self.pixels = cfg, data, device, pixels
        self.alpha_bar = schedule_alpha_bar(cfg.schedule)
        self.alpha_bar_dev = self.alpha_bar.to(device)
        self.objective = LOSSES.build(cfg.loss)
        # what else the network reads: cond='s labels or prompts (cross-attention), task=superres's low-resolution image
        self.cond = self.condition()
        self.labels = bool(cfg.model.num_classes) or (self.cond is not None and self.cond.needs_labels)  # drawn with the images
        self.decode = None  # latent diffusion: latents -> pixels, for the pictures
        self.title = f"model {cfg.model.arch}"

    @property
    def images(self):
        """The dataset in pixels (a latent run's ``data`` is its latents)."""
        return self.pixels if self.pixels is not None else self.data

    def condition(self):
        return condition_of(self.cfg, self.data.shape, self.data, pixels=self.pixels) if self.cfg.task in ("diffusion", "superres") else None

    def build(self) -> torch.nn.Module:
        return build_network(self.cfg.model, self.data.shape, self.cond)

    def wrap(self, net) -> Denoiser:
        """The network behind what the loss calls (the preconditioning)."""
        return Denoiser(net, self.alpha_bar_dev, self.cfg.model.prediction, self.cfg.model.sigma_data)

    def draw(self, g: torch.Generator, x0: torch.Tensor, y, train: bool = True, index=None) -> dict:
        """The per-item draws of a batch of images ``x0`` (labels ``y``; items ``index`` of the training split, or of the
        test split when not ``train``) from ``g``, on ``g``'s device."""
        out = {"sigma": self.objective.sigmas(len(x0), self._alpha_bar_on(g.device), generator=g)}
        drop = self.cfg.trainer.cond_drop_prob if train else 0.0
        if self.cond is not None:
            out["y"] = self.cond.draw(x0, y, drop, g, index, train)  # the label, or a random training phrasing of its caption, or the null condition
        elif self.labels:
            out["y"] = drop_labels(y, drop, self.cfg.model.num_classes, g)
        out["noise"] = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype)
        return out

    def _alpha_bar_on(self, device: torch.device) -> torch.Tensor:
        return self.alpha_bar_dev if device.type == self.alpha_bar_dev.device.type else self.alpha_bar.to(device)

    def loss(self, wrapped, batch: dict) -> torch.Tensor:
        return wrapped.loss(batch["x0"], batch["sigma"], batch["noise"], self.objective.weight, batch.get("y"))

    def common_loss(self, wrapped, batch: dict) -> torch.Tensor | None:
        """The x0 error ||D(x0 + sigma noise, sigma) - x0||^2 of a held-out batch at COMMON_SIGMAS (cycled over its items),
        unweighted: the same quantity for any schedule, prediction and loss weighting, so runs that differ in them compare on
        it (their training losses average other errors over other noise levels)."""
        sigma = COMMON_SIGMAS.to(batch["x0"].device).repeat(len(batch["x0"]) // len(COMMON_SIGMAS) + 1)[:len(batch["x0"])]
        return wrapped.loss(batch["x0"], sigma, batch["noise"], lambda s, _: torch.ones_like(s), batch.get("y"))

    def zero_net(self) -> torch.nn.Module | None:
        return ZeroNet()

    def grid_conditioning(self) -> Conditioning | None:
        """A conditional model's sample grids: the classes in turn (a prompt model: each class's first training caption)."""
        n = self.cfg.trainer.num_grid
        if getattr(self.cond, "per_image", False):  # the dataset's own captions: the training images', in turn
            seen = [caps[0] for caps in self.cond.captions["train"]]
            prompts = [seen[i % len(seen)] for i in range(n)]
            return Conditioning(None, self.cond.null, inputs=self.cond.encode(prompts, stored=True), prompts=prompts)
        k = self.cond.num_classes if self.cond is not None else self.cfg.model.num_classes
        if not k:
            return None
        labels = class_labels(self.cfg.trainer.num_grid, range(k))
        if self.cond is None:
            return Conditioning(labels, torch.tensor(k))
        return Conditioning(labels, self.cond.null, inputs=self.cond.inputs(labels))

    def grid_samples(self, net, cond: Conditioning) -> torch.Tensor:
        """``trainer.num_grid`` samples of the (EMA) network ``net`` steered by ``cond``, in pixels (a latent run's decoded)."""
        tc = self.cfg.trainer
        samples = generate(self.wrap(net), self.alpha_bar, self.cfg.sampler, min(tc.sample_steps, len(self.alpha_bar)), tc.num_grid,
                           self.data.shape, seed=self.cfg.seed, device=self.device, bounded=self.data.levels is not None, cond=cond).samples
        return self.decode(samples) if self.decode is not None else samples

    def snapshot(self, net, step: int, folder: Path) -> tuple[Path, str, dict | None]:
        """(picture, its logger tag, a metrics record or None) of the (EMA) network ``net`` at ``step``."""
        path = sample_grid(self.wrap(net), self.alpha_bar, self.cfg, self.data, step, folder, self.device, self.decode, self.grid_conditioning())
        return path, "samples", None


class ClassifierTask(DiffusionTask):
    """A noise-aware classifier of the dataset's classes (Dhariwal & Nichol 2021): cross-entropy at every noise level."""

    def __init__(self, cfg, data, device, pixels=None):
        super().__init__(cfg, data, device)
        self.labels = True

    def build(self) -> torch.nn.Module:
        return build_model(self.cfg.model, self.data.shape, classify=self.data.num_classes)

    def wrap(self, net) -> NoisyClassifier:
        return NoisyClassifier(net, self.alpha_bar_dev, self.cfg.model.sigma_data)

    def draw(self, g, x0, y, train=True, index=None) -> dict:
        return super().draw(g, x0, y, train=False)  # the true labels, never dropped

    def loss(self, wrapped, batch):
        return wrapped.loss(batch["x0"], batch["y"], batch["sigma"], batch["noise"])

    def common_loss(self, wrapped, batch):
        return None  # a classifier's loss does not depend on the schedule's weighting

    def zero_net(self):
        return ZeroNet(self.data.num_classes)

    def snapshot(self, net, step, folder):
        path, acc = accuracy_plot(self.wrap(net), self.alpha_bar, self.data, self.cfg.seed, step, folder, self.device)
        log.info("step %d: test accuracy by timestep: %s", step, ", ".join(f"t={t} {a:.3f}" for t, a in acc.items()))
        return path, "test_accuracy", {"test_accuracy": {str(t): a for t, a in acc.items()}}


class AutoencoderTask:
    """A KL autoencoder of the dataset's images (``autoencoder.*``): per item the posterior's noise; the loss is the
    reconstruction MSE + the KL term.  Snapshots draw test images over their reconstructions and log the test split's
    reconstruction MSE and PSNR."""

    labels = False
    cond = None

    def __init__(self, cfg, data, device, pixels=None):
        self.cfg, self.data, self.device = cfg, data, device
        self.latent_shape = None  # known once built

    def build(self) -> KLAutoencoder:
        net = AUTOENCODERS.build(self.cfg.autoencoder, self.data.shape)
        self.latent_shape = net.latent_shape
        self.title = f"autoencoder {self.cfg.autoencoder.name} (latents {list(net.latent_shape)})"
        return net

    def wrap(self, net) -> Reconstruction:
        return Reconstruction(net, self.cfg.autoencoder.kl_weight, self.cfg.autoencoder.get("disc_weight", 0.0))

    def draw(self, g, x0, y, train=True, index=None) -> dict:
        return {"noise": torch.randn((len(x0), *self.latent_shape), generator=g, device=g.device, dtype=x0.dtype)}

    def loss(self, wrapped, batch):
        return wrapped.loss(batch["x0"], batch["noise"])

    def common_loss(self, wrapped, batch):
        return None  # no noise levels

    def zero_net(self):
        return None  # no zero-output reference: a collapse is not this task's failure

    @torch.no_grad()
    def reconstruction_metrics(self, net, batch_size: int = 256) -> dict:
        """The test split's reconstructions through the posterior means: their MSE and PSNR (dB), and for a labelled
        dataset their fd_ref (Frechet distance to the train split in the reference classifier's features) beside the
        floor of the real test images: what no latent model decoding through this autoencoder can beat."""
        net.eval()
        try:
            recon = torch.cat([net(x.to(self.device))[0].float().clamp(-1, 1).cpu() for x in self.data.test.split(batch_size)])
        finally:
            net.train()
        test = self.data.test.float()
        out = {"test_recon_mse": (recon - test).pow(2).flatten(1).mean(1).mean().item(), "test_psnr": psnr(test, recon).mean().item()}
        if self.data.num_classes:
            ref, _ = reference_classifier(self.data, Path(self.cfg.paths.cache_dir))
            fd = chunked_frechet(ref.features(recon), ref.features(test), ref.features(self.data.train), self.cfg.seed)
            out.update(test_recon_fd_ref=fd["value"], test_fd_ref_floor=fd["floor"])
        return out

    def snapshot(self, net, step, folder):
        n = min(self.cfg.trainer.num_grid // 2 or 1, len(self.data.test))
        x = self.data.test[torch.linspace(0, len(self.data.test) - 1, n).long()].to(self.device)  # spread: splits may be sorted by class
        net.eval()
        with torch.no_grad():
            recon = net(x)[0].float().clamp(-1, 1)
        net.train()
        folder.mkdir(exist_ok=True)
        path = folder / f"reconstructions_{step:08d}.png"
        record = self.reconstruction_metrics(net)
        chunks = [list(range(i, min(i + 8, n))) for i in range(0, n, 8)]  # rows of 8: test images, then their reconstructions
        run = folder.parent
        save_grid(torch.cat([x.cpu(), recon.cpu()]), path, rows=[r for c in chunks for r in (c, [n + i for i in c])],
                  row_labels=["test", "reconstructed"] * len(chunks),
                  title=f"{run.parent.name}/{run.name} step {step} (EMA): test PSNR {record['test_psnr']:.2f} dB")
        log.info("step %d: test reconstructions: MSE %.5f, PSNR %.2f dB%s", step, record["test_recon_mse"], record["test_psnr"],
                 f", fd_ref {record['test_recon_fd_ref']:.2f} (real test images: {record['test_fd_ref_floor']:.2f})" if "test_recon_fd_ref" in record else "")
        return path, "reconstructions", record


class ImageConditionedTask(DiffusionTask):
    """A denoiser steered by an image made from each image (super-resolution's low-res copy, a ControlNet's control);
    its snapshots draw condition | samples | real rows of eight test images.  ``tag`` names the picture and the
    ``Conditioning`` field that carries (condition images, real images, names)."""

    tag = ""

    def condition_images(self, real: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The conditions of the test images ``real`` (test indices ``index``)."""
        raise NotImplementedError

    def save_picture(self, images: torch.Tensor, real: torch.Tensor, samples: torch.Tensor, path: Path) -> Path:
        raise NotImplementedError

    def grid_conditioning(self):
        n, test = self.cfg.trainer.num_grid, self.images.test
        m = min(8, len(test))
        index = torch.linspace(0, len(test) - 1, m).long()
        real = test[index].float()
        images = self.condition_images(real, index)
        return Conditioning(None, self.cond.null, inputs=images[[i % m for i in range(n)]], **{self.tag: (images, real, None)})

    def snapshot(self, net, step, folder):
        cond = self.grid_conditioning()
        samples = self.grid_samples(net, cond)
        folder.mkdir(exist_ok=True)
        images, real, _ = getattr(cond, self.tag)
        return self.save_picture(images, real, samples, folder / f"{self.tag}_{step:08d}.png"), self.tag, None


class SuperresTask(ImageConditionedTask):
    """Super-resolution (SR3): a denoiser that also reads the area-downsampled image (``superres.*``); its snapshots draw
    low-res | bicubic | samples | real rows of test images."""

    tag = "superres"

    def condition_images(self, real, index):
        from .superres import downsample

        return downsample(real, self.cond.factor)

    def save_picture(self, images, real, samples, path):
        from .superres import save_superres_grid

        return save_superres_grid(images, real, samples, self.cond.factor, path)


class ControlNetTask(ImageConditionedTask):
    """A ControlNet on a frozen diffusion run (``base=``, ``control=``): the run takes the base's model, schedule and loss,
    and trains only the ControlNet branch; its snapshots draw control | samples | real rows of test images."""

    tag = "control"

    def __init__(self, cfg, data, device, pixels=None):
        from .control import load_base

        self.base_path, base = load_base(cfg, data, pixels)
        cfg.model, cfg.schedule, cfg.loss = base.cfg.model, base.cfg.schedule, base.cfg.get("loss", cfg.loss)  # the base's denoiser
        log.info("ControlNet (control=%s) on the frozen base %s (step %d)", cfg.control, self.base_path, base.step)
        super().__init__(cfg, data, device, pixels)

    def condition(self):
        from .control import ControlCond

        return ControlCond(self.cfg.control, self.images.shape, base=str(self.base_path), pixels=self.pixels, own=self.images)

    def condition_images(self, real, index):
        from .control import extract

        own = self.images.test_controls  # a folder's own controls, or controls made from the images
        return extract(self.cond.kind, real) if own is None else self.cond.adapt(own[index])

    def save_picture(self, images, real, samples, path):
        from .control import save_control_grid

        return save_control_grid(images, real, samples, path)


TASKS.register("diffusion")(DiffusionTask)
TASKS.register("controlnet")(ControlNetTask)
TASKS.register("superres")(SuperresTask)
TASKS.register("classifier")(ClassifierTask)
TASKS.register("autoencoder")(AutoencoderTask)
