"""Where a training run's numbers and pictures go besides ``metrics.jsonl`` (which stays the source of
truth): ``logger=tensorboard``, ``logger=csv``, several at once (``logger=[tensorboard,csv]``) or none
(``logger=none``).

A logger is a registered class ``Logger(run_dir, start_step, config_text, *, <options>)`` with
``scalars(step, values)``, ``image(step, tag, path)`` and ``close()``.  ``start_step`` is where this
process begins (0, or the step it resumed from): what a logger holds past it belongs to an abandoned
branch or to a process that died before checkpointing, and is dropped, as in metrics.jsonl.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .core.registry import Registry
from .errors import UsageError

LOGGERS = Registry("logger")


@LOGGERS.register("tensorboard")
class TensorBoard:
    """TensorBoard event files in ``<run>/tensorboard/``: scalars under ``train/``, the sample grids as
    images, the resolved config as text.  ``tensorboard --logdir outputs`` shows every run."""

    def __init__(self, run_dir: Path, start_step: int, config_text: str, *, flush_secs: int = 30):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("logger=tensorboard needs the tensorboard package: pip install 'diffctl[tensorboard]'") from None
        # purge_step: events past the step this process starts from are hidden (a resumed or branched run)
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None, flush_secs=flush_secs)
        self.writer.add_text("config", "    " + config_text.replace("\n", "\n    "), start_step)

    def scalars(self, step: int, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "branch":
                self.writer.add_scalar(f"train/{key}", value, step)

    def image(self, step: int, tag: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


@LOGGERS.register("csv")
class CSV:
    """``<run>/metrics.csv``: one row per logged step, a column per number (for a spreadsheet or pandas)."""

    FIELDS = ("step", "branch", "loss", "heldout_loss", "lr", "grad_norm", "img_per_s", "skipped")

    def __init__(self, run_dir: Path, start_step: int, config_text: str):
        self.path = Path(run_dir) / "metrics.csv"
        kept = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.path)

    def scalars(self, step: int, values: dict) -> None:
        if "loss" not in values and "heldout_loss" not in values:
            return  # records of other kinds (a classifier's accuracy curve) have their own shape
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS, extrasaction="ignore").writerow({"step": step, **values})

    def image(self, step: int, tag: str, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


class Loggers:
    """The loggers a config's ``logger`` group chose, called together."""

    def __init__(self, logger_cfg, run_dir: Path, start_step: int, config_text: str):
        self.active = [LOGGERS.build(node, run_dir, start_step, config_text) for node in (logger_cfg or {}).values()]

    def scalars(self, step: int, values: dict) -> None:
        for logger in self.active:
            logger.scalars(step, values)

    def image(self, step: int, tag: str, path: Path) -> None:
        for logger in self.active:
            logger.image(step, tag, path)

    def close(self) -> None:
        for logger in self.active:
            logger.close()
