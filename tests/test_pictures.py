"""What the pictures say: titles and column headers on grids, a class per column, the inpainting mask in its own colour."""

import numpy as np
import torch
from PIL import Image

from diffctl.generation import class_columns, class_labels
from diffctl.io.images import MASK_COLOUR, save_grid, save_inpaint_grid


def test_a_class_cycled_batch_gets_one_column_per_class():
    assert class_columns(class_labels(30, range(10))) == 10  # digits: 10 columns, not sqrt(30) -> 6
    assert class_columns(class_labels(8, [3, 7])) == 2
    assert class_columns(torch.tensor([1, 1, 2, 2])) == 0  # not cycled: the default layout
    assert class_columns(class_labels(40, range(20))) == 0  # too many classes for columns
    assert class_columns(None) == 0


def test_a_titled_grid_is_the_plain_grid_under_a_band_of_text(tmp_path):
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    save_grid(images, tmp_path / "plain.png", nrow=3)
    save_grid(images, tmp_path / "titled.png", nrow=3, title="run/step_00000010.pt (step 10): ddim, 50 steps, NFE 50",
              headers=[("real", 1), ("", 1), ("generated", 1)])
    plain, titled = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")) for n in ("plain", "titled"))
    band = titled.shape[0] - plain.shape[0]
    assert band > 20  # two lines of text
    assert np.array_equal(titled[band:, : plain.shape[1]], plain)  # the grid itself is untouched
    assert (titled[:band] < 128).any()  # something is written in the band


def test_the_region_to_regenerate_is_magenta_unlike_the_grids_grey(tmp_path):
    known = torch.linspace(-1, 1, 64).view(1, 8, 8)
    keep = torch.ones(1, 8, 8)
    keep[:, :, :4] = 0  # the left half is regenerated
    save_inpaint_grid(known, keep, known.expand(6, 1, 8, 8), tmp_path / "inpaint.png", per_row=6)
    img = np.asarray(Image.open(tmp_path / "inpaint.png").convert("RGB")).astype(int)
    magenta = ((MASK_COLOUR + 1) * 127.5).round().int().tolist()
    is_magenta = (img == magenta).all(-1)
    scale = 256 // 8 // 4
    start = (1 + 8 + 1) * scale  # the second column: the padding, the first image, the padding
    cols = np.nonzero(is_magenta.any(0))[0]
    assert cols.min() == start and cols.max() == start + 4 * scale - 1  # only in the second column's left half
    assert is_magenta.sum() == 4 * 8 * scale * scale  # exactly the masked pixels
