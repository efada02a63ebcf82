"""Rich progress bars for long work, and the terminal's log lines through the same console.

On a terminal, a bar shows the work's rate (and images/s where an item is a batch), its elapsed and remaining time
and the latest status (training: loss and learning rate), and ``use_console_for_logs()`` sends the log's console lines
through the bar's console, so they print above a live bar instead of into its line.  A record logged with
``extra=BAR_LINE`` says what a live bar already shows (training's step lines): the log file always gets it, the
terminal only while no bar is live.  Off a terminal (a batch job's log, a pipe) there is no bar and the log is
plain, as Hydra configures it.
"""

from __future__ import annotations

import contextlib
import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
BAR_LINE = {"bar_line": True}  # logging extra: a line a live progress bar already shows
_live = [0]  # how many bars are showing


class ConsoleHandler(logging.Handler):
    """Log records printed through the bars' console (above a live bar), except ``BAR_LINE`` ones while a bar shows."""

    def emit(self, record: logging.LogRecord) -> None:
        if _live[0] and getattr(record, "bar_line", False):
            return
        try:
            console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001  (logging's contract: a handler never raises)
            self.handleError(record)


def use_console_for_logs() -> None:
    """On a terminal, replace the root logger's console handlers (Hydra's, to stdout or stderr) by a ``ConsoleHandler``
    with their format; the file handlers stay.  A no-op off a terminal."""
    if not console.is_terminal:
        return
    root = logging.getLogger()
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler and getattr(h.stream, "isatty", lambda: False)():
            handler = ConsoleHandler(h.level)
            handler.setFormatter(h.formatter)
            root.removeHandler(h)
            root.addHandler(handler)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not console.is_terminal,
    )


def rate_text(speed: float | None, per_item: int | None = None) -> str:
    """``12.3 it/s``, and with ``per_item`` images in each item ``12.3 it/s, 787 img/s``."""
    if not speed:
        return ""
    return f"{speed:6.1f} it/s" + (f", {speed * per_item:.0f} img/s" if per_item else "")


def status_text(status: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in status.items())


_shared: list = [None]  # the one live Progress while any bar shows: bars opened inside another (eval's stages) share it


@contextlib.contextmanager
def progress_bar(description: str, total: int, start: int = 0, per_item: int | None = None):
    """Yield ``advance(n=1, **status)``: moves the bar and shows the rate (img/s too with ``per_item`` images per item)
    plus the latest status fields.  A bar opened while another shows is a line under it, removed when it ends."""
    outer = _shared[0] is None
    if outer:
        _shared[0] = _progress()
        _shared[0].start()
    progress = _shared[0]
    task = progress.add_task(description, total=total, completed=start, rate="", status="")
    shown = not progress.disable
    _live[0] += shown

    def advance(n: int = 1, **status) -> None:
        fields = {"rate": rate_text(next(t for t in progress.tasks if t.id == task).speed, per_item)}
        if status:
            fields["status"] = status_text(status)
        progress.update(task, advance=n, **fields)

    try:
        yield advance
    finally:
        _live[0] -= shown
        if outer:
            progress.stop()
            _shared[0] = None
        else:
            progress.remove_task(task)
