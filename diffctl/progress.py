"""Rich progress bars for long work (shown on a terminal only; logs stay clean otherwise)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not sys.stderr.isatty(),
    )


@contextlib.contextmanager
def progress_bar(description: str, total: int, start: int = 0):
    """Yield ``advance(n=1, **status)``: moves the bar and shows it/s plus any status fields."""
    with _progress() as progress:
        task = progress.add_task(description, total=total, completed=start, rate="", status="")

        def advance(n: int = 1, **status) -> None:
            speed = progress.tasks[task].speed
            fields = {"rate": f"{speed:6.1f} it/s" if speed else ""}
            if status:
                fields["status"] = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in status.items())
            progress.update(task, advance=n, **fields)

        yield advance
