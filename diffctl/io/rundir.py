"""Run folders: where they are, what they hold, and how ``ckpt=`` finds a checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import UsageError
from .checkpoint import list_checkpoints

CKPT_DIR = "checkpoints"


def new_run_dir(parent: str) -> str:
    """``parent/<date>/<time>``, created here with an exclusive mkdir, so two runs started in the same
    second never share a folder: the second gets ``<time>_1`` (the Hydra resolver ``diffctl_run_dir``).
    Memoised per parent within one command, so every resolution of the run folder gives the same path."""
    import datetime

    if parent in new_run_dir.created:
        return new_run_dir.created[parent]
    now = datetime.datetime.now()
    day = Path(parent) / now.strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        path = day / (now.strftime("%H-%M-%S") + (f"_{i}" if i else ""))
        try:
            path.mkdir()
            break
        except FileExistsError:
            i += 1
        except FileNotFoundError:  # a failed run just removed the (then empty) date folder: make it again
            day.mkdir(parents=True, exist_ok=True)
    new_run_dir.created[parent] = str(path)
    return str(path)


new_run_dir.created = {}


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write the resolved config as ``config.yaml``."""
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def run_task(run_dir: Path) -> str:
    """What a train run folder trains (its config's ``task``): diffusion, or classifier."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    return cfg.get("task", "diffusion") if isinstance(cfg, dict) else "diffusion"


def train_runs(output_root: Path, task: str = "diffusion") -> list[Path]:
    """Train run folders of ``task`` under ``output_root`` (single runs and sweep jobs), newest first."""
    root = Path(output_root) / "train"
    if not root.is_dir():
        return []
    runs = {p.parent.parent for p in root.rglob(f"{CKPT_DIR}/step_*.pt")}
    runs = [r for r in runs if run_task(r) == task]
    return sorted(runs, key=lambda p: max(c.stat().st_mtime for c in list_checkpoints(p / CKPT_DIR)), reverse=True)


def resolve_checkpoint(spec: str, output_root: Path, key: str = "ckpt", task: str = "diffusion") -> Path:
    """``ckpt=`` (or another ``key``) -> a checkpoint file: a file, a run folder (its newest), or
    ``latest``: the newest train run of ``task`` (so a classifier run is never a diffusion model's latest)."""
    if spec == "latest":
        runs = train_runs(output_root, task)
        if not runs:
            command = "diffctl train" + (f" task={task}" if task != "diffusion" else "")
            raise UsageError(f"{key}=latest: no {'' if task == 'diffusion' else task + ' '}train run with a checkpoint under {Path(output_root) / 'train'}; "
                             f"run '{command}' first or pass {key}=<file|run folder>")
        return list_checkpoints(runs[0] / CKPT_DIR)[-1]
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        ckpts = list_checkpoints(path / CKPT_DIR) or list_checkpoints(path)
        if not ckpts:
            raise UsageError(f"{key}={spec}: no checkpoints in this folder (expected {CKPT_DIR}/step_*.pt)")
        return ckpts[-1]
    raise UsageError(f"{key}={spec}: no such file or folder (give a checkpoint file, a run folder or 'latest')")


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def drop_after(self, step: int) -> None:
        """Forget records past ``step`` (a run resumed from an older checkpoint logs them again)."""
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            self.path.write_text("".join(l + "\n" for l in lines if json.loads(l).get("step", 0) <= step))

    def write(self, **record) -> None:
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
