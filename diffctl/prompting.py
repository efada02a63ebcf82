"""How a diffusion model is conditioned (``cond=``), and prompts turned into what its network reads.

    none   unconditional, or class labels added to the time embedding (``model.num_classes``)
    class  one learned token per class, read through cross-attention (label K is the null label)
    text   captions -> word ids -> a small transformer trained jointly with the denoiser (GLIDE)
    clip   captions -> CLIP token ids -> a local, frozen Hugging Face CLIP text encoder (Stable Diffusion)

The same ``Cond`` interface carries the image conditions of ``task=superres`` (``superres.LowResCond``)
and ``task=controlnet`` (``control.ControlCond``); ``condition_of`` picks a run's.

A labelled dataset's captions are templated from its labels in a few phrasings ("a handwritten 7",
"the digit seven", ...); other phrasings of the same words are held out of training, to measure
whether the model follows a prompt it has not seen ("the digit 7").  A condition object (``Cond``)
builds the context encoder, draws a training batch's conditions on the device (a random phrasing of
each item's class, dropped to the null condition at ``trainer.cond_drop_prob``), encodes prompts
for sampling, and writes the record a checkpoint keeps to rebuild it (``state["cond"]``).
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .core.registry import Registry
from .errors import UsageError
from .models.context import BOS, PAD, ClassTokens, FrozenCLIP, TextEncoder

log = logging.getLogger("diffctl.prompting")
CONDS = Registry("cond")
PROMPT_SETS = ("train", "heldout")  # prompts=train | heldout: the templated captions of that set

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_DATASETS = ("digits", "digits_gmm", "mnist", "mnist5k")
CLASS_NAMES = {
    "fashion_mnist": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
# (training phrasings, held-out phrasings): the held-out ones recombine the training words ({n}: the numeral, {w}: the word)
DIGIT_TEMPLATES = (("a handwritten {n}", "the digit {w}", "a picture of the number {w}", "{n}", "the number {n}"),
                   ("a handwritten {w}", "the digit {n}", "a picture of the number {n}", "{w}", "the number {w}"))
NAME_TEMPLATES = (("a photo of a {w}", "the {w}", "a picture of a {w}"), ("a picture of the {w}", "a {w}", "a photo of the {w}"))
CLASS_TEMPLATES = (("class {n}", "an item of class {n}"), ("an item of the class {n}", "the class {n}"))


def _kind(ch: str) -> str:
    """How the normaliser treats a character: ``w`` part of a word (a letter, mark or number of any script), ``1`` a word
    of its own (an ideograph or kana, which their scripts write without spaces, and symbols such as emoji), ``-`` a hyphen,
    ``.`` a separator (white space, punctuation, control characters), which is dropped."""
    cat = unicodedata.category(ch)
    if cat[0] in "LMN":
        name = unicodedata.name(ch, "")
        return "1" if name.startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA")) else "w"
    if ch == "-":
        return "-"
    return "1" if cat[0] == "S" else "."


def normal_words(text: str) -> tuple[list[str], str]:
    """The one normal form of captions and prompts: (words, dropped).  ``text`` is NFKC-normalised and case-folded; its
    words are runs of letters, marks and numbers of any script (hyphens inside a word kept), each ideograph, kana or symbol
    (an emoji) a word of its own; white space, punctuation and control characters separate them and are dropped
    (``dropped``: those other than white space, in order of appearance, once each)."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    out, word, dropped = [], "", {}
    for i, ch in enumerate(text):
        kind = _kind(ch)
        if kind == "w":
            word += ch
            continue
        if kind == "-" and word and i + 1 < len(text) and _kind(text[i + 1]) == "w":
            word += ch
            continue
        if word:
            out.append(word)
            word = ""
        if kind == "1":
            out.append(ch)
        elif not ch.isspace():
            dropped[ch] = None
    if word:
        out.append(word)
    return out, "".join(dropped)


def words(text: str) -> list[str]:
    """The words of ``text`` in normal form (``normal_words``)."""
    return normal_words(text)[0]


def templated_captions(dataset: str, num_classes: int) -> dict:
    """``{"train": [[caption, ...] per class], "heldout": [...]}`` for a labelled dataset."""
    if dataset in DIGIT_DATASETS:
        templates, names = DIGIT_TEMPLATES, [(str(k), DIGIT_WORDS[k]) for k in range(num_classes)]
    elif dataset in CLASS_NAMES and len(CLASS_NAMES[dataset]) == num_classes:
        templates, names = NAME_TEMPLATES, [(w, w) for w in CLASS_NAMES[dataset]]
    else:
        templates, names = CLASS_TEMPLATES, [(str(k), str(k)) for k in range(num_classes)]
    return {part: [[t.format(n=n, w=w) for t in phrasings] for n, w in names] for part, phrasings in zip(PROMPT_SETS, templates)}


class Cond:
    """A model's condition: ``null`` (one item's unconditional input), ``network`` (the network that reads it), ``draw``
    (training inputs) and ``record()`` (what its checkpoint keeps)."""

    name = ""
    null: torch.Tensor
    needs_labels = True  # drawn from the dataset's labels (captions, classes); super-resolution's comes from the images

    def encoder(self, dim: int, pretrained: bool = True) -> nn.Module:
        raise NotImplementedError

    def network(self, model_cfg, data_shape, classify: int = 0, pretrained: bool = True) -> nn.Module:
        """The model's network behind this condition's context encoder: ``model.context_dim`` wide tokens
        (``DEFAULT_CONTEXT_DIM`` when it is 0) read by cross-attention."""
        from .models import build_model
        from .models.context import Conditioned

        dim = model_cfg.get("context_dim") or DEFAULT_CONTEXT_DIM
        return Conditioned(build_model(model_cfg, data_shape, classify, context_dim=dim), self.encoder(dim, pretrained), self.null)

    def draw(self, x0: torch.Tensor, y: torch.Tensor, drop: float, g: torch.Generator, index=None, train: bool = True) -> torch.Tensor:
        """The network inputs of images ``x0`` of classes ``y`` (items ``index`` of the training split, or with ``train`` false
        of the test split; on ``g``'s device), each the null condition with probability ``drop``."""
        raise NotImplementedError

    def record(self) -> dict:
        return {"name": self.name}

    def inputs(self, labels: torch.Tensor) -> torch.Tensor:
        """The network inputs that ask for classes ``labels`` (a prompt model: each class's first training phrasing)."""
        return labels


class PixelTables:
    """What a latent model's image condition is made from: a function of the pixel images (``make``), computed once per
    split and device for the whole dataset and looked up by item index, since the batch the trainer draws is latents."""

    def __init__(self, pixels, make):
        self.pixels, self.make, self._tables = pixels, make, {}

    def __call__(self, index: torch.Tensor, train: bool) -> torch.Tensor:
        key = (train, str(index.device))
        if key not in self._tables:
            images = self.pixels.train if train else self.pixels.test
            self._tables[key] = torch.cat([self.make(b.float()) for b in images.split(1024)]).to(index.device)
        return self._tables[key][index]


def dropped(inputs: torch.Tensor, null: torch.Tensor, drop: float, g: torch.Generator) -> torch.Tensor:
    """Each item of ``inputs`` replaced by the null condition with probability ``drop`` (classifier-free training)."""
    hit = torch.rand(len(inputs), generator=g, device=inputs.device) < drop
    return torch.where(hit.reshape(-1, *[1] * (inputs.ndim - 1)), null.to(inputs.device), inputs)


class ClassCond(Cond):
    """``cond=class``: the dataset's classes, one learned token each through cross-attention."""

    name = "class"

    def __init__(self, data=None, record: Optional[dict] = None):
        self.num_classes = record["num_classes"] if record else data.num_classes
        self.null = torch.tensor(self.num_classes)

    def encoder(self, dim, pretrained=True):
        return ClassTokens(self.num_classes, dim)

    def draw(self, x0, y, drop, g, index=None, train=True):
        return dropped(y, self.null, drop, g)

    def record(self):
        return {"name": self.name, "num_classes": self.num_classes}


def captions_of(data) -> tuple[dict, bool]:
    """(captions, per image): a dataset's own caption of each image (``dataset.captions``; ``heldout`` = the test split's),
    or captions templated from its labels."""
    if getattr(data, "train_captions", None) is not None:
        return {"train": [[c] for c in data.train_captions], "heldout": [[c] for c in data.test_captions]}, True
    return templated_captions(data.name, data.num_classes), False


class PromptCond(Cond):
    """Captions and a tokenizer: ``encode(prompts)`` -> ``[N, L]`` token ids.  Templated captions are per class
    (``captions["train"][k]``: the phrasings of class k seen in training) and ``draw`` picks a training phrasing of each
    item's class; a dataset's own captions (``per_image``) are one per image, drawn by the item's index."""

    def __init__(self, data=None, record: Optional[dict] = None):
        self.captions, self.per_image = (record["captions"], record.get("per_image", False)) if record else captions_of(data)
        self.needs_labels = not self.per_image
        self.num_classes = 0 if self.per_image else len(self.captions["train"])  # classes that classes= may ask for
        self._tables = {}

    def encode(self, prompts: list[str], stored: bool = False) -> torch.Tensor:
        """Token ids of ``prompts`` (``stored``: the dataset's own captions, not a user's prompts)."""
        raise NotImplementedError

    def record(self) -> dict:
        return {"name": self.name, "captions": self.captions, "per_image": self.per_image}

    def label_of(self, prompt: str) -> Optional[int]:
        """The class whose (training or held-out) caption ``prompt`` is, in normal form; None for another prompt."""
        if self.per_image:
            return None
        key = " ".join(words(prompt))
        return next((k for part in PROMPT_SETS for k, caps in enumerate(self.captions[part]) if key in (" ".join(words(c)) for c in caps)), None)

    def inputs(self, labels):
        return self.encode([self.captions["train"][k][0] for k in labels.tolist()])

    def _table(self, part: str, device) -> torch.Tensor:
        """The token ids of every caption of ``part``, ``[K, P, L]``, on ``device`` (encoded once)."""
        key = (part, str(device))
        if key not in self._tables:
            self._tables[key] = torch.stack([self.encode(caps, stored=True) for caps in self.captions[part]]).to(device)
        return self._tables[key]

    def draw(self, x0, y, drop, g, index=None, train=True):
        if self.per_image:  # the item's own caption (the held-out batch: a test image's)
            ids = self._table("train" if train else "heldout", index.device)[index, 0]
        else:
            table = self._table("train", y.device)
            ids = table[y, torch.randint(table.shape[1], (len(y),), generator=g, device=y.device)]
        return dropped(ids, self.null, drop, g)


class TextCond(PromptCond):
    """``cond=text``: a word-level vocabulary built from the training captions and a small transformer trained with the
    denoiser.  A prompt word outside the vocabulary is refused (``unknown_words=error``) or left out (``skip``)."""

    name = "text"

    def __init__(self, data=None, record: Optional[dict] = None, *, layers: int = 2, heads: int = 4, max_words: int = 16,
                 unknown_words: str = "error"):
        super().__init__(data, record)
        if record:
            self.vocab = list(record["vocab"])
        else:
            captions = [c for caps in self.captions["train"] for c in caps]
            empty = [c for c in captions if not words(c)]
            if len(empty) == len(captions):
                raise UsageError(f"cond=text: none of the {len(captions)} training captions has a word (e.g. {captions[0][:40]!r}): "
                                 "the model would be unconditional")
            dropped = "".join(dict.fromkeys("".join(normal_words(c)[1] for c in captions)))
            if empty or dropped:
                log.warning("cond=text: captions are read as words of letters, numbers and symbols%s%s", f"; dropped: {dropped[:40]!r}" if dropped else "",
                            f"; {len(empty)} of {len(captions)} captions have no word and train as the empty prompt (e.g. {empty[0][:40]!r})" if empty else "")
            seen = dict.fromkeys(w for c in captions for w in words(c))
            self.vocab = ["<pad>", "<bos>", *seen]
            longest = max(len(words(c)) for caps in self.captions["train"] for c in caps)
            if longest > max_words:
                raise UsageError(f"the longest training caption has {longest} words; cond.max_words={max_words}: raise it to {longest}")
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.layers, self.heads, self.max_words, self.unknown_words = layers, heads, max_words, unknown_words
        self.null = self.encode([""])[0]

    def encode(self, prompts, stored: bool = False):
        """Token ids ``[N, max_words + 1]`` of ``prompts``: a user's (a word the model has not seen is refused, or left out with
        ``unknown_words=skip``; a prompt with no word at all is refused) or, with ``stored``, the dataset's own captions
        (a test caption's unseen words are left out: the model cannot know them)."""
        out = torch.full((len(prompts), self.max_words + 1), PAD, dtype=torch.long)
        for i, p in enumerate(prompts):
            ws, dropped = normal_words(p)
            if not ws and dropped and not stored:
                raise UsageError(f"prompt {p!r} has no words ({dropped[:20]!r} are not read); give words, or prompt='' for the unconditional model")
            unknown = [w for w in ws if w not in self.index]
            if unknown and self.unknown_words == "error" and not stored:
                raise UsageError(f"prompt {p!r}: {', '.join(repr(w) for w in dict.fromkeys(unknown))} not in this model's vocabulary "
                                 f"of {len(self.vocab) - 2} words ({', '.join(self.vocab[2:])}); it was trained with cond.unknown_words=error "
                                 "(cond.unknown_words=skip leaves such words out)")
            ids = [BOS] + [self.index[w] for w in ws if w in self.index]
            if stored:
                ids = ids[: self.max_words + 1]
            if len(ids) > self.max_words + 1:
                raise UsageError(f"prompt {p!r} has {len(ids) - 1} words; this model reads at most cond.max_words={self.max_words}")
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def encoder(self, dim, pretrained=True):
        return TextEncoder(len(self.vocab), self.max_words + 1, dim, self.layers, self.heads)

    def record(self):
        return {**super().record(), "vocab": self.vocab}


CLIP_FILES = {"config.json": ("config.json",), "weights": ("model.safetensors", "pytorch_model.bin"),
              "tokenizer": ("tokenizer.json", "vocab.json")}


def _clip_model():
    from transformers import CLIPTextModel

    return CLIPTextModel


def check_clip_folder(path: str, recorded: bool = False) -> Path:
    """The local CLIP folder of ``cond.path``, checked for a config, weights and tokenizer files (never downloaded);
    ``recorded``: the folder a checkpoint names (its tokenizer is read from there)."""
    folder = Path(path).expanduser()
    if recorded and not folder.is_dir():
        raise UsageError(f"this model reads prompts through the CLIP folder {folder}, which is not there any more (moved or deleted): "
                         "put it back, its tokenizer turns prompts into the token ids the model was trained on")
    if not path or not folder.is_dir():
        raise UsageError(f"cond=clip needs cond.path=<a local Hugging Face CLIP folder> (config.json, model.safetensors, tokenizer files); "
                         f"{path or 'none'} is not a folder. diffctl never downloads one: save one with CLIPTextModel.save_pretrained "
                         "and CLIPTokenizer.save_pretrained")
    missing = [" or ".join(names) for names in CLIP_FILES.values() if not any((folder / n).is_file() for n in names)]
    if (folder / "vocab.json").is_file() and not (folder / "tokenizer.json").is_file() and not (folder / "merges.txt").is_file():
        missing.append("merges.txt")
    if missing:
        raise UsageError(f"cond.path={folder} is missing {', '.join(missing)}: it needs a CLIP text model's config and weights "
                         "and its tokenizer (CLIPTextModel / CLIPTokenizer save_pretrained)")
    return folder


class ClipCond(PromptCond):
    """``cond=clip``: a local Hugging Face CLIP text encoder + tokenizer folder (``cond.path``), frozen; its last hidden
    states are the context (a learned projection when their width is not ``model.context_dim``).  Needs ``transformers``
    (``pip install 'diffctl[clip]'``); nothing is ever downloaded."""

    name = "clip"

    def __init__(self, data=None, record: Optional[dict] = None, *, path: str = ""):
        super().__init__(data, record)
        self.path = check_clip_folder(record["path"] if record else path, recorded=bool(record))
        try:
            from transformers import CLIPTextConfig, CLIPTokenizerFast
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise UsageError("cond=clip needs Hugging Face transformers: pip install 'diffctl[clip]'") from None
        from .io.files import read_json
        from .models.sizing import check_fits_weights

        hf_logging.disable_progress_bar()
        what = f"the CLIP folder {self.path}"
        read_json(self.path / "config.json", what)  # bounded and a JSON object, before transformers reads it
        try:
            self.config = CLIPTextConfig.from_pretrained(self.path, local_files_only=True)
            check_fits_weights(lambda: _clip_model()(self.config), [self.path / n for n in CLIP_FILES["weights"]], what)
            self.tokenizer = CLIPTokenizerFast.from_pretrained(self.path, local_files_only=True)
            self.length = min(int(self.tokenizer.model_max_length), int(self.config.max_position_embeddings))
        except UsageError:
            raise
        except Exception as e:  # transformers' own errors on a foreign or broken folder
            raise UsageError(f"cannot read {what}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}") from None
        self.null = self.encode([""])[0]

    def encode(self, prompts, stored=False):
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.length, truncation=True, return_tensors="pt").input_ids

    def encoder(self, dim, pretrained=True):
        model = _clip_model()
        if not pretrained:
            return FrozenCLIP(model(self.config), dim)
        try:
            clip = model.from_pretrained(self.path, local_files_only=True, use_safetensors=(self.path / "model.safetensors").is_file() or None)
        except Exception as e:  # a pickled .bin that the safe loader refuses, weights of another shape
            raise UsageError(f"cannot load the CLIP text model in {self.path}: "
                             f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}") from None
        return FrozenCLIP(clip, dim)

    def record(self):
        return {**super().record(), "path": str(self.path)}


def no_cond(data=None, record=None):
    return None


CONDS.register("none")(no_cond)
CONDS.register("class")(ClassCond)
CONDS.register("text")(TextCond)
CONDS.register("clip")(ClipCond)

DEFAULT_CONTEXT_DIM = 128


def build_cond(cond_cfg, data=None, record: Optional[dict] = None) -> Optional[Cond]:
    """The condition of ``cond_cfg`` (a run's ``cond`` group; None: a run from before it existed) for ``data`` at training,
    or from a checkpoint's ``record``; None for ``cond=none``."""
    if cond_cfg is None or cond_cfg.get("name", "none") == "none":
        return None
    return CONDS.build(cond_cfg, data, record)


def condition_of(cfg, data_shape, data=None, record: Optional[dict] = None, pixels=None) -> Optional[Cond]:
    """The condition a diffusion run's network reads: ``task=superres``'s low-resolution image, ``task=controlnet``'s
    control, or ``cond=``'s (``build_cond``); at training from ``data`` (``pixels``: a latent run's pixel dataset, which
    image conditions are made from), at loading from the checkpoint's ``record``."""
    if cfg.get("task") == "controlnet":
        from .control import ControlCond

        return ControlCond(cfg.get("control"), tuple(data_shape), record, pixels=pixels)
    if cfg.get("task") == "superres":
        from .superres import LowResCond

        sr = cfg.get("superres") or {}
        return LowResCond(tuple(pixels.shape if pixels is not None else data_shape), record, factor=sr.get("factor", 2),
                          noise=sr.get("noise", 0.0), blur=sr.get("blur", 0.0), pixels=pixels)
    return build_cond(cfg.get("cond"), data, record)


def build_network(model_cfg, data_shape, cond: Optional[Cond], classify: int = 0, pretrained: bool = True) -> nn.Module:
    """The model's network, behind what reads ``cond`` when there is one (``Cond.network``)."""
    from .models import build_model

    if cond is None:
        return build_model(model_cfg, data_shape, classify)
    return cond.network(model_cfg, data_shape, classify, pretrained)
