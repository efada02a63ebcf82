"""What the pictures say: titles and column headers on grids, a class per column, the inpainting mask in its own colour."""

import numpy as np
import torch
from PIL import Image

from diffctl.evaluation import nfe_ticks
from diffctl.generation import class_columns, class_labels, grid_layout
from diffctl.io.images import MASK_COLOUR, TITLE_WIDTH, save_grid, save_inpaint_grid


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
    assert titled.shape[1] == TITLE_WIDTH > plain.shape[1]  # a narrow grid: centred under its title, not left of a white strip
    left = (TITLE_WIDTH - plain.shape[1]) // 2
    assert np.array_equal(titled[band:, left:left + plain.shape[1]], plain)  # the grid itself is untouched
    assert (titled[:band] < 128).any()  # something is written in the band


def test_a_long_title_wraps_to_the_grid_instead_of_widening_the_picture(tmp_path):
    images = torch.rand(64, 1, 8, 8) * 2 - 1  # 8 x 8 cells of 72 px: 584 px wide
    title = "2026-12-07/09-20-15/step_00000400.pt (step 400): ddim, 50 steps, NFE 50, guidance w=3 " * 3
    save_grid(images, tmp_path / "g.png", title=title)
    save_grid(images, tmp_path / "plain.png")
    img, plain = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("L")) for n in ("g", "plain"))
    assert img.shape[1] == plain.shape[1]  # (it was 8 px per character: 2,000 px of white right of the grid)
    band = img.shape[0] - plain.shape[0]
    assert band > 3 * 15 and (img[:band] < 128).any()  # three lines or more


def test_prompts_get_a_row_each_with_their_text_and_classes_a_headed_column_each(tmp_path):
    prompts = ["the digit three", "a seven", "zero", "the digit one"] * 3 + ["the digit three", "a seven"]  # 14 images
    layout = grid_layout(None, prompts, "title")
    assert layout["row_labels"] == ["the digit three", "a seven", "zero", "the digit one"]
    assert layout["rows"] == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10], [3, 7, 11]]  # image i has prompt i mod 4
    assert grid_layout(None, ["a cat"] * 5, "t") == {"title": 't; prompt "a cat"'}
    assert grid_layout(class_labels(6, [3, 7]), None, "t")["headers"] == [("class 3", 1), ("class 7", 1)]
    images = torch.rand(14, 1, 8, 8) * 2 - 1
    save_grid(images, tmp_path / "rows.png", rows=layout["rows"], row_labels=layout["row_labels"])
    save_grid(images[:4], tmp_path / "plain.png", nrow=4)
    img, plain = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("L")) for n in ("rows", "plain"))
    margin = img.shape[1] - plain.shape[1]
    assert margin > 40 and (img[:, :margin] < 128).any()  # the prompts, at the left
    assert img.shape[0] == 4 * plain.shape[0] - 3 * 8  # four rows (sharing the padding between them, 8 px upscaled)


def test_nfe_ticks_keep_the_round_one_of_close_neighbours():
    assert nfe_ticks([10, 19, 20, 40]) == [10, 20, 40]  # heun's 19 beside 20: 20 was lost
    assert nfe_ticks([18, 20]) == [20] and nfe_ticks([5, 10, 100]) == [5, 10, 100]


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
