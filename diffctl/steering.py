"""What a sample/eval config asks to steer generation with (``classes=``, ``guidance.*``, ``inpaint.*``),
checked and turned into a ``generation.Conditioning``; and generation run from such a config.

This is the config side of generation: it raises the ``UsageError``s of bad requests, loads the
guidance classifier (``runtime.load_classifier``) and reads inpainting PNGs (``data.inputs``).  ``diffctl sample`` and
``diffctl eval`` generate through ``generate_from_config``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .data.inputs import load_png, test_images
from .errors import UsageError
from .generation import Conditioning, Generated, class_labels, generate
from .progress import progress_bar
from .runtime import Source, load_classifier

log = logging.getLogger("diffctl.sample")

MASKS = ("left", "right", "top", "bottom", "center")


def region_mask(name: str, shape: tuple) -> torch.Tensor:
    """1 where the named region (one of ``MASKS``) is to be regenerated, over ``[C, H, W]``."""
    c, h, w = shape
    m = torch.zeros(shape)
    region = {"left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
              "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None)),
              "center": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))}[name]
    m[:, region[0], region[1]] = 1
    return m


def _requested_classes(classes, num_classes: int) -> list:
    """``classes=all | [3, 7] | 3`` as a list of class indices, checked."""
    if classes == "all":
        classes = list(range(num_classes))
    elif OmegaConf.is_list(classes):
        classes = list(classes)
    else:
        classes = [classes]
    bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < num_classes]
    if bad or not classes:
        raise UsageError(f"classes={classes}: must be 'all' or class indices in [0, {num_classes - 1}]")
    return classes


def requested_prompts(cfg: DictConfig, source: Source) -> Optional[list]:
    """The prompt of each image from ``prompt=`` / ``prompts=`` (a list cycled over the images, or ``train`` / ``heldout``:
    the templated captions of that set, every phrasing of each of ``classes`` in turn), checked; None when neither is set."""
    from .prompting import PROMPT_SETS, PromptCond

    prompt, prompts, n = cfg.get("prompt"), cfg.get("prompts"), cfg.num_samples
    if prompt is None and prompts is None:
        return None
    if not isinstance(source.cond, PromptCond):
        have = "class-conditional: ask for classes with classes=" if source.num_classes else "unconditional"
        raise UsageError(f"prompt= and prompts= need a text-conditioned model (diffctl train cond=text or cond=clip); this model is {have}")
    if prompt is not None and prompts is not None:
        raise UsageError("give prompt=\"...\" (every image) or prompts=[...] (cycled over the images), not both")
    if prompt is not None:
        return [str(prompt)] * n
    if prompts in PROMPT_SETS:
        captions = source.cond.captions[prompts]
        classes = _requested_classes(cfg.get("classes") or "all", len(captions))
        per = len(captions[0])
        return [captions[classes[i % len(classes)]][(i // len(classes)) % per] for i in range(n)]
    if not OmegaConf.is_list(prompts) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise UsageError(f"prompts={prompts}: give a list of prompts, prompts=[\"a handwritten 3\",\"the digit seven\"], or "
                         f"one of {', '.join(PROMPT_SETS)} (the captions of that set)")
    return [str(prompts[i % len(prompts)]) for i in range(n)]


def conditioning_from_config(cfg: DictConfig, source: Source, device: torch.device = torch.device("cpu")) -> Optional[Conditioning]:
    """Classes (``classes``), prompts (``prompt``, ``prompts``), guidance (``guidance``) and inpainting (``inpaint``) from a
    sample/eval config, checked; None when the config asks for none of them."""
    from .control import ControlCond, control_inputs
    from .superres import LowResCond, superres_inputs

    data, n = source.data, cfg.num_samples
    classes, g = cfg.get("classes"), cfg.guidance
    labels = classifier = inputs = superres = control = None
    images = source.pixels if source.pixels is not None else data  # image conditions are of the pixels (a latent model's too)
    prompts = requested_prompts(cfg, source)
    spec = cfg.superres.image if cfg.get("superres") is not None else None
    if isinstance(source.cond, LowResCond):
        if classes is not None or g.classifier is not None:
            raise UsageError("a super-resolution model is steered by its low-resolution inputs (superres.image=), not classes=")
        superres = superres_inputs(spec, source.cond, images)
        inputs = superres[0][[i % len(superres[0]) for i in range(n)]]  # image i upsamples input i mod M
        log.info("super-resolution x%d of %d inputs (%s%s)", source.cond.factor, len(superres[0]), ", ".join(superres[2][:4]),
                 " ..." if len(superres[2]) > 4 else "")
    elif isinstance(source.cond, ControlCond):
        if classes is not None or g.classifier is not None:
            raise UsageError("a ControlNet is steered by its control images (control.image=) and control.scale, not classes=")
        control = control_inputs(cfg.control.image, source.cond, images)
        inputs = control[0][[i % len(control[0]) for i in range(n)]]  # image i follows control i mod M
        source.net.scale = float(cfg.control.scale)
        log.info("ControlNet (%s) at control.scale=%g, %d controls (%s%s)", source.cond.kind, cfg.control.scale, len(control[0]),
                 ", ".join(control[2][:4]), " ..." if len(control[2]) > 4 else "")
    elif cfg.get("control") is not None and (cfg.control.image is not None or cfg.control.scale != 1.0):
        raise UsageError("control.image and control.scale are for a ControlNet (diffctl train task=controlnet base=<run>); this model has none")
    if spec is not None and not isinstance(source.cond, LowResCond):
        raise UsageError("superres.image= is for a super-resolution model (diffctl train task=superres); this model generates from noise alone")
    if inputs is not None:
        pass  # an image-conditioned model (super-resolution, ControlNet): its images are its condition
    elif prompts is not None:
        from .prompting import PROMPT_SETS

        inputs = source.cond.encode(prompts, stored=cfg.get("prompts") in PROMPT_SETS)  # a set's captions are the data's, not typed
        found = [source.cond.label_of(p) for p in prompts]
        labels = torch.tensor(found) if None not in found else None
        if g.classifier is not None and labels is None:
            raise UsageError("guidance.classifier steers towards classes: use prompts whose class is known (prompts=train|heldout, "
                             "or captions such as 'the digit seven')")
        if g.classifier is not None:
            classifier = load_classifier(str(g.classifier), cfg, source, device)
        log.info("prompts: %s%s", ", ".join(repr(p) for p in dict.fromkeys(prompts[:8])), " ..." if len(set(prompts)) > 8 else "")
    elif classes is None:
        if g.scale != 1.0 or g.rescale or g.classifier is not None:
            raise UsageError("guidance.* steers towards classes or prompts: add classes=all or classes=[3,7]"
                             + (", or prompt=\"...\"" if source.cond is not None and source.cond.name in ("text", "clip") else ""))
    else:
        if g.classifier is not None:
            classifier = load_classifier(str(g.classifier), cfg, source, device)
            if source.num_classes and source.num_classes != classifier.num_classes:
                raise UsageError(f"guidance.classifier has {classifier.num_classes} classes, the model {source.num_classes}")
        elif source.num_classes == 0:
            raise UsageError("classes= needs a class-conditional model (model.num_classes=N) or a classifier "
                             "(guidance.classifier=<a 'diffctl train task=classifier' run>); this model is unconditional")
        labels = class_labels(n, _requested_classes(classes, source.num_classes or classifier.num_classes))
        if source.cond is not None and source.num_classes:
            inputs = source.cond.inputs(labels)  # a prompt model: each class's first training caption
    if (labels is not None or inputs is not None) and source.null is None and (g.scale != 1.0 or g.rescale):
        raise UsageError("guidance.scale and guidance.rescale are classifier-free guidance, for a class-conditional model; "
                         "steer this unconditional one with guidance.classifier_scale")
    if g.rescale and g.scale == 1.0:
        log.warning("guidance.rescale=%s does nothing at guidance.scale=1 (the conditional model itself)", g.rescale)
    inp = cfg.get("inpaint")
    known = mask = shown = None
    if inp is not None and (inp.image is not None or inp.mask is not None):
        if inp.image is None or inp.mask is None:
            raise UsageError("inpainting needs both inpaint.image=<test index | PNG> and inpaint.mask=<region | PNG>")
        data = source.pixels if source.pixels is not None else data  # a latent model: the request is in pixels
        if not data.is_image:
            raise UsageError("inpainting needs image data")
        if isinstance(inp.image, int):
            known = test_images(inp.image, data, "inpaint.image")[0][0]
        else:
            known = load_png(str(inp.image), data.shape, "inpaint.image")
        if inp.mask in MASKS:
            hole = region_mask(inp.mask, data.shape)
        elif str(inp.mask).lower().endswith(".png"):
            hole = (load_png(str(inp.mask), data.shape, "inpaint.mask") > 0).float()
        else:
            raise UsageError(f"inpaint.mask={inp.mask}: choose {', '.join(MASKS)} or a PNG file (white = regenerate)")
        if source.latent is not None:  # Stable Diffusion's way: replacement inpainting of the encoded image in the latent space
            from .latent import latent_mask

            shown = (known, 1 - hole)
            known = source.latent.encode(known[None])[0]
            hole_px, hole = hole, latent_mask(hole, known.shape)
            log.info("inpainting in the latent space: the %d masked pixels make %d of %d latent positions to regenerate; "
                     "the known pixels are pasted back after decoding", int(hole_px.amax(0).sum()), int(hole[0].sum()), hole[0].numel())
        mask = 1 - hole  # 1 = known
        if inp.resample > 1 and cfg.sampler.name != "ddpm":
            log.warning("inpaint.resample=%d: RePaint takes DDPM steps; sampler=%s is not used", inp.resample, cfg.sampler.name)
        log.info("inpainting %s: regenerating %d of %d pixels", inp.image, int(hole.sum()), hole.numel())
    elif inp is not None and inp.resample > 1:
        raise UsageError("inpaint.resample needs inpaint.image and inpaint.mask")
    if labels is None and inputs is None and known is None:
        return None
    return Conditioning(labels, source.null, g.scale, g.rescale, known, mask, inp.resample if inp is not None else 1,
                        classifier.log_prob if classifier else None, g.classifier_scale, classifier.info if classifier else {},
                        inputs, prompts, shown, superres, control)


def generate_from_config(source: Source, cfg: DictConfig, device: torch.device, steps: int,
                         sampler_cfg: DictConfig | None = None) -> Generated:
    """``generate`` from ``source`` as a sample/eval config asks (num_samples, batch_size, seed, classes,
    guidance, inpaint; ``sampler_cfg`` or the config's sampler), with a progress bar."""
    sampler_cfg = sampler_cfg if sampler_cfg is not None else cfg.sampler
    cond = conditioning_from_config(cfg, source, device)
    resample = cond.resample if cond is not None else 1
    total = steps * resample * ((cfg.num_samples + cfg.batch_size - 1) // cfg.batch_size)
    with progress_bar(f"sampling {sampler_cfg.name} x{steps}", total) as advance:
        gen = generate(source.denoise, source.alpha_bar, sampler_cfg, steps, cfg.num_samples, source.data.shape,
                       seed=cfg.seed, batch_size=cfg.batch_size, device=device, bounded=source.data.levels is not None,
                       on_step=lambda *state: advance(), cond=cond)
    bad = int((~gen.samples.reshape(len(gen.samples), -1).isfinite().all(1)).sum())
    if bad:  # never written as images: NaN casts to arbitrary pixels
        raise UsageError(f"{bad} of {len(gen.samples)} samples are not finite (NaN or inf): the model's weights overflow, "
                         f"{source.describe()} may be damaged or diverged; try an earlier checkpoint")
    return gen


def describe_guidance(g: dict) -> str:
    """``guidance w=2`` / ``classifier guidance s=1 (path)`` from the guidance record of sample.json."""
    parts = []
    if "scale" in g:
        parts.append(f"guidance w={g['scale']:g}" + (f" rescale {g['rescale']:g}" if g["rescale"] else ""))
    if "classifier_scale" in g:
        parts.append(f"classifier guidance s={g['classifier_scale']:g} ({g['classifier']})")
    return ", ".join(parts)


def pixels_of(source: Source, gen) -> torch.Tensor:
    """What ``generate`` made as the user sees it: a latent model's samples decoded to pixels (inpainting's known pixels
    pasted back, as the autoencoder cannot quite reproduce them); any other model's as they are."""
    samples, cond = gen.samples, gen.conditioning
    if source.decode is None:
        return samples
    samples = source.decode(samples)
    if cond is not None and cond.pixels is not None:
        known, keep = cond.pixels
        samples = keep * known + (1 - keep) * samples
    return samples
