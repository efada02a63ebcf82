"""The data order (a new shuffle every epoch, a function of seed and step) and training data streamed from its files
(``dataset.in_memory=false``): the same trajectory as in memory, exact resume mid-epoch, per-rank shares, one-line errors."""

import multiprocessing

import numpy as np
import pytest
import torch
from conftest import logged_losses, make_trainer
from PIL import Image
from test_robustness import _interrupt_after

from diffctl.data import load_dataset, vision
from diffctl.data.order import EpochOrder, epoch_permutation
from diffctl.data.stream import FileImages, StepBatches
from diffctl.errors import Interrupted, UsageError


def digit_folder(root, n=30, rgb=False):
    """``n`` 8x8 digits as PNGs (grayscale, or tinted RGB) in two class folders (a folder dataset of 27 train, 3 test images)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(n):
        folder = root / f"c{digits.target[i] % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        gray = (digits.images[i] * 255 / 16).round().astype(np.uint8)
        pixels = np.stack([gray, gray // 2, 255 - gray], -1) if rgb else gray
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def folder_opts(root, *more, rgb=False):
    return ["dataset=folder", f"dataset.root={root}", "dataset.image_size=null", f"dataset.grayscale={str(not rgb).lower()}", "trainer.precision=fp32",
            "trainer.log_every=1", "trainer.ckpt_every=0", "trainer.eval_every=0", "model.num_classes=2", *more]


# --- the order --------------------------------------------------------------------------------------------------------
def test_every_epoch_is_a_new_permutation_and_steps_tile_it():
    n, batch = 10, 4  # batches straddle the epochs' boundaries
    order = EpochOrder(5, n)
    seen = torch.cat([order(step, batch) for step in range(10)])  # 40 items: 4 epochs
    epochs = seen.view(4, n)
    assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)  # each item once per epoch
    assert len({tuple(e.tolist()) for e in epochs}) == 4  # a new shuffle each epoch
    full = torch.cat([epoch_permutation(5, e, n) for e in range(5)])
    assert torch.equal(seen, full[:40])
    assert not torch.equal(EpochOrder(6, n)(0, n), epochs[0])  # the seed matters
    # a pure function of the step: queried from step 7 on (a resume mid-epoch), or with a batch larger than the data
    later = EpochOrder(5, n)
    assert torch.equal(torch.cat([later(step, batch) for step in range(7, 10)]), seen[28:])
    assert torch.equal(EpochOrder(5, n)(1, 25), full[25:50])


def test_each_rank_reads_its_contiguous_share_of_the_global_batch():
    whole = list(StepBatches(10, 1, 6, 2, 5))
    shares = [list(StepBatches(10, 1, 6, 2, 5, rank=r, world=3)) for r in range(3)]
    assert len(whole) == 3 and all(len(s) == 3 for s in shares)
    for step in range(3):
        assert sum((s[step] for s in shares), []) == whole[step]
        assert [len(s[step]) for s in shares] == [2, 2, 2]


# --- streaming ----------------------------------------------------------------------------------------------------------
def test_streamed_files_hold_what_memory_holds(tmp_path):
    from omegaconf import OmegaConf

    from diffctl.config import load_option

    root = digit_folder(tmp_path / "imgs")
    cfg = OmegaConf.merge(load_option("dataset", "folder"), {"root": str(root), "image_size": None, "grayscale": True})
    held = load_dataset(OmegaConf.merge(cfg, {"in_memory": True}), stream=True)
    files = load_dataset(OmegaConf.merge(cfg, {"in_memory": False}), stream=True)
    assert not held.streamed and files.streamed and isinstance(files.train, FileImages)
    rgb = load_dataset(OmegaConf.merge(cfg, {"root": str(digit_folder(tmp_path / "rgb", rgb=True)), "grayscale": False}), stream=False)
    assert rgb.shape == (3, 8, 8) and rgb.train.is_contiguous() and rgb.test.is_contiguous()  # NCHW, not the decoder's HWC seen transposed
    assert files.shape == held.shape == (1, 8, 8) and len(files.train) == len(held.train) == 27
    assert torch.equal(torch.stack([files.train[i] for i in range(27)]), held.train)
    assert torch.equal(files.test, held.test) and torch.equal(files.train_labels, held.train_labels)
    assert not load_dataset(OmegaConf.merge(cfg, {"in_memory": False})).streamed  # sampling and evaluation read into memory
    # null: streamed above the size threshold
    assert not load_dataset(cfg, stream=True).streamed
    stream_above = vision.STREAM_ABOVE
    try:
        vision.STREAM_ABOVE = 27 * 64 * 4 - 1  # a byte less than the split's 27 float32 8x8 images
        assert load_dataset(cfg, stream=True).streamed
    finally:
        vision.STREAM_ABOVE = stream_above


@pytest.mark.parametrize("workers,rgb", [(0, False), (2, False), (0, True)])
def test_streamed_and_in_memory_training_follow_one_trajectory(tmp_path, workers, rgb):
    # batch 8 over 27 images: epochs end mid-batch; random flips and labels draw from the step's generator, dropout from the
    # global one (which the DataLoader must leave alone); RGB images are decoded as [H, W, C] buffers: both batches must be
    # laid out alike (NCHW), or convolutions round them differently
    root = digit_folder(tmp_path / "imgs", rgb=rgb)
    opts = folder_opts(root, "trainer.steps=8", "dataset.hflip=true", "model.dropout=0.1", rgb=rgb)
    held = make_trainer(tmp_path / "held", *opts, "dataset.in_memory=true")
    held.fit()
    streamed = make_trainer(tmp_path / "streamed", *opts, "dataset.in_memory=false", f"dataset.workers={workers}")
    assert streamed.data.streamed and streamed.train_x is None
    streamed.fit()
    assert logged_losses(tmp_path / "held") == logged_losses(tmp_path / "streamed")
    for (name, p), q in zip(held.ema.model.state_dict().items(), streamed.ema.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_a_streamed_run_resumes_mid_epoch_exactly(tmp_path):
    root = digit_folder(tmp_path / "imgs")
    opts = folder_opts(root, "trainer.steps=7", "dataset.in_memory=false", "dataset.workers=1", "model.dropout=0.1")
    whole = make_trainer(tmp_path / "whole", *opts)
    whole.fit()
    first = make_trainer(tmp_path / "split", *opts)
    _interrupt_after(first, 2)  # step 2 of batch 8: 16 of 27 items, mid-epoch
    with pytest.raises(Interrupted):
        first.fit()
    # its DataLoader worker ended with fit (left to the garbage collector, its iterator took 5 s to join it)
    assert not multiprocessing.active_children()
    resumed = make_trainer(tmp_path / "split", *opts)
    resumed.fit()
    assert logged_losses(tmp_path / "whole") == logged_losses(tmp_path / "split")
    for (name, p), q in zip(whole.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q), name


def test_streaming_errors_are_one_line(tmp_path):
    root = digit_folder(tmp_path / "imgs")
    with pytest.raises(UsageError, match=r"^dataset.in_memory=false streams image files \(dataset=celeba or folder\); dataset=mnist is read"):
        vision.load("mnist", root=str(tmp_path), in_memory=False)
    with pytest.raises(UsageError, match=r"^dataset.in_memory=false streams the training images, which task=autoencoder .* set dataset.in_memory=true"):
        make_trainer(tmp_path / "r1", *folder_opts(root, "dataset.in_memory=false", "task=autoencoder", "model.num_classes=0"))
    # an image that goes bad after the listing: the worker's error, one line
    bad = sorted(root.rglob("*.png"))[-1]  # the last training image: read only when its step comes
    bad.write_bytes(b"not a png")
    trainer = make_trainer(tmp_path / "r2", *folder_opts(root, "trainer.steps=8", "dataset.in_memory=false", "dataset.workers=1"))
    with pytest.raises(UsageError) as err:
        trainer.fit()
    assert "\n" not in str(err.value) and str(err.value).startswith("dataset=folder: cannot read image ") and bad.name in str(err.value)

