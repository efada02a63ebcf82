"""Turning tensors into the files users look at: PNG grids, 2-D scatter plots, npz arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] ``[N, C, H, W]`` -> uint8 ``[N, H, W, C]`` in 0..255 (rounded)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


PAD = 1  # pixels between grid cells, before upscaling


def save_grid(images: torch.Tensor, path: Path, scale: int = 0, nrow: int = 0, title: str = "", headers: list | None = None,
              row_labels: list | None = None, rows: list | None = None) -> None:
    """Save ``[N, C, H, W]`` images in [-1, 1] as one PNG grid, upscaled so small images stay visible, with ``title`` above
    it (wrapped to the picture's width), ``headers``, ``[(text, columns), ...]``, over consecutive spans of its columns
    (what each column is) and ``row_labels`` at the left of its rows (what each row is: a prompt, test or reconstructed).
    ``rows``: the indices of the images of each row (shorter rows end in blank cells), instead of ``nrow`` a row."""
    from PIL import Image
    from torchvision.utils import make_grid

    if rows:
        nrow = max(map(len, rows))
        blank = torch.zeros(1, *images.shape[1:])
        images = torch.cat([torch.cat([images[r].float(), blank.expand(nrow - len(r), *images.shape[1:])]) for r in rows])
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(images)))))
    grid = make_grid(((images.float().clamp(-1, 1) + 1) / 2).cpu(), nrow=nrow, padding=PAD, pad_value=0.5)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    scale = scale or max(1, 256 // max(images.shape[-1], 1) // 4)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if title or headers or row_labels:
        img = _annotate(img, title, headers or [], list(row_labels or []), (images.shape[-1] + PAD) * scale, (images.shape[-2] + PAD) * scale,
                        PAD * scale)
    img.save(path)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken at spaces (a word longer than that gets a line of its own)."""
    lines = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


TITLE_WIDTH = 360  # the narrowest a titled picture is: a grid narrower than this is centred under its title


def _annotate(img, title: str, headers: list, row_labels: list, cell: int, row: int, pad: int):
    """``img`` below a white band with ``title`` (wrapped) and, centred over their spans of ``cell``-pixel columns,
    ``headers``; ``row_labels`` in a margin at its left, one per ``row``-pixel row."""
    from PIL import Image, ImageDraw

    size = 13
    font, small = _font(size), _font(size - 2)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_lines = [_wrap(measure, str(t), small, 220) for t in row_labels]
    margin = int(max((measure.textlength(l, font=small) for ls in label_lines for l in ls), default=-8)) + 8 if row_labels else 0
    width = max(img.width + margin, TITLE_WIDTH if title else 0)
    title_lines = _wrap(measure, title, font, width - 8) if title else []
    band = len(title_lines) * (size + 4) + (size + 6 if headers else 0) + (4 if title_lines or headers else 0)
    out = Image.new("RGB", (width, img.height + band), "white")
    left = margin + (width - margin - img.width) // 2  # centred when the title is the wider
    out.paste(img.convert("RGB"), (left, band))
    draw = ImageDraw.Draw(out)
    y = 2
    for line in title_lines:
        draw.text((4, y), line, fill="black", font=font)
        y += size + 4
    x = left + pad
    for text, span in headers:
        w_span = span * cell - pad
        if text:
            w = draw.textlength(text, font=small)
            draw.text((x + max(0, (w_span - w) / 2), y), text, fill="black", font=small)
            draw.line([(x, y + size + 1), (x + w_span, y + size + 1)], fill="gray")
        x += span * cell
    for i, lines in enumerate(label_lines):
        top = band + pad + i * row + (row - pad - len(lines) * (size + 1)) / 2
        for j, line in enumerate(lines):
            draw.text((4, top + j * (size + 1)), line, fill="black", font=small)
    return out


def save_scatter(points: torch.Tensor, path: Path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Scatter plot of 2-D points ``[N, 2]`` (reference data drawn faintly behind); 1-D points ``[N, 1]``: a histogram."""
    if points.shape[1] == 1:
        from .plots1d import save_histogram

        return save_histogram(points, path, reference=reference, title=title)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        ax.scatter(*reference[:5000].cpu().T.numpy(), s=2, c="lightgray", label="data")
    ax.scatter(*points.cpu().T.float().numpy(), s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_accuracy_plot(timesteps: list, accuracy: list, path: Path, chance: float, title: str = "") -> None:
    """A noise-aware classifier's test accuracy against the timestep of its (noisy) input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(timesteps, accuracy, "o-", label="test accuracy")
    ax.axhline(chance, color="gray", ls="--", label=f"chance ({chance:.2f})")
    ax.set_xlabel("timestep t of the noisy input")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


MASK_COLOUR = torch.tensor([1.0, -1.0, 1.0])  # magenta in [-1, 1]: the region to regenerate, unlike any grey of the data or the grid


def save_inpaint_grid(known: torch.Tensor, keep: torch.Tensor, samples: torch.Tensor, path: Path, per_row: int = 6) -> Path:
    """Rows of: the input image, the input with the region to regenerate in magenta, ``per_row`` results; headed so."""
    rgb = lambda x: x.float().expand(*x.shape[:-3], 3, *x.shape[-2:]) if x.shape[-3] == 1 else x.float()
    known, samples = rgb(known), rgb(samples)
    masked = torch.where(keep.expand_as(known) > 0.5, known, MASK_COLOUR[:, None, None].expand_as(known))
    rows = [torch.cat([known[None], masked[None], samples[i:i + per_row]]) for i in range(0, min(len(samples), 4 * per_row), per_row)]
    rows = [torch.cat([r, torch.zeros(per_row + 2 - len(r), *known.shape)]) for r in rows]  # pad the last row
    save_grid(torch.cat(rows), path, nrow=per_row + 2, headers=[("input", 1), ("regenerated", 1), ("results", per_row)])
    return path


def save_samples(samples: torch.Tensor, run_dir: Path, reference: torch.Tensor | None = None, title: str = "", layout: dict | None = None) -> dict:
    """Write ``grid.png`` (titled; ``layout``: save_grid's rows / nrow / headers / row_labels) and ``samples.npz`` (``images``
    uint8 [N,H,W,C], or ``x`` float [N, D])."""
    run_dir = Path(run_dir)
    if samples.ndim == 4:
        save_grid(samples, run_dir / "grid.png", title=title, **(layout or {}))
        np.savez_compressed(run_dir / "samples.npz", images=to_uint8(samples))
    else:
        save_scatter(samples, run_dir / "grid.png", reference=reference, title=title)
        np.savez_compressed(run_dir / "samples.npz", x=samples.float().cpu().numpy())
    return {"grid": str(run_dir / "grid.png"), "samples": str(run_dir / "samples.npz")}
