"""What the training loop knows about its own steps without waiting for them.

A step never makes the host wait for the device: its loss, gradient norm and verdict (was the update
applied?) are added to a ``StepTally`` on the device, and the host reads the tally only where it has
something to do with the numbers (a log line, a checkpoint, a stop).  The rules that turn those numbers
into actions live here too: too many non-finite steps in a row stop the run, and a loss that sits where
a network predicting zero would sit, or keeps rising after warm-up, gets one warning line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Window:
    """The steps since the host last looked, as read from a ``StepTally``."""

    loss_sum: float = 0.0  # of the applied steps' losses
    applied: int = 0  # steps whose update was applied (finite loss and gradient norm)
    skipped: int = 0  # steps whose update was skipped
    bad_loss: int = 0  # skipped steps whose loss was not finite (the others had a non-finite gradient norm)
    in_a_row: int = 0  # skipped steps in a row up to now
    limit_step: int = -1  # the step at which the run of skipped steps first reached the limit; -1 if it never did
    limit_loss: float = 0.0  # that step's loss
    grad_norm: float = float("nan")  # the last step's gradient norm

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.applied if self.applied else None

    def then(self, newer: Window) -> Window:
        """This window followed by ``newer``: counts add up, the rest is the newer one's."""
        return Window(self.loss_sum + newer.loss_sum, self.applied + newer.applied, self.skipped + newer.skipped,
                      self.bad_loss + newer.bad_loss, newer.in_a_row, newer.limit_step, newer.limit_loss, newer.grad_norm)


class StepTally:
    """Running totals on the device: ``add`` is a few tensor ops and never synchronises; ``read`` does, once."""

    def __init__(self, device: torch.device, limit: int):
        z = lambda dtype=torch.float64: torch.zeros((), dtype=dtype, device=device)
        self.limit = limit
        self.loss_sum, self.applied, self.skipped, self.bad_loss, self.in_a_row = z(), z(torch.long), z(torch.long), z(torch.long), z(torch.long)
        self.limit_step, self.limit_loss, self.grad_norm = z(torch.long) - 1, z(), z(torch.float32)

    @torch.no_grad()
    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, ok: torch.Tensor) -> None:
        """Step ``step`` (1-based) had ``loss`` and ``grad_norm`` and was applied where ``ok``."""
        self.loss_sum += torch.where(ok, loss.double(), 0.0)
        self.applied += ok
        self.skipped += ~ok
        self.bad_loss += ~torch.isfinite(loss)
        self.in_a_row.add_(1).mul_(~ok)
        hit = (self.in_a_row >= self.limit) & (self.limit_step < 0)
        self.limit_step.copy_(torch.where(hit, step, self.limit_step))
        self.limit_loss.copy_(torch.where(hit, loss.double(), self.limit_loss))
        self.grad_norm.copy_(grad_norm)

    def read(self, reset: bool = True) -> Window:
        """The window since the last reset (one device-to-host copy); ``reset`` starts a new one."""
        values = torch.stack([t.double() for t in (self.loss_sum, self.applied, self.skipped, self.bad_loss, self.in_a_row,
                                                   self.limit_step, self.limit_loss, self.grad_norm)]).tolist()
        window = Window(values[0], *map(int, values[1:6]), values[6], values[7])
        if reset:
            for t in (self.loss_sum, self.applied, self.skipped, self.bad_loss):
                t.zero_()
        return window

    def restore(self, in_a_row: int) -> None:
        """A resumed run's run of skipped steps (from its checkpoint)."""
        self.in_a_row.fill_(in_a_row)


def non_finite_message(window: Window, steps: int, first: int) -> str | None:
    """The warning line for the skipped steps of a window of ``steps`` steps from step ``first``; None if there were none."""
    skipped = window.skipped
    if not skipped:
        return None
    what = [f"non-finite loss in {window.bad_loss}" if window.bad_loss else "", f"non-finite gradient norm in {skipped - window.bad_loss}"
            if skipped > window.bad_loss else ""]
    where = f"step {first}" if steps == 1 else f"steps {first}-{first + steps - 1}"
    return f"{where}: {skipped} update{'s' * (skipped != 1)} skipped ({', '.join(w for w in what if w)}); {window.in_a_row} in a row now"


def limit_cause(window: Window) -> str:
    loss = window.limit_loss
    return "gradient norm" if math.isfinite(loss) else f"loss ({loss})"


class LossWatch:
    """Watches the logged losses for the two ways a run fails without an error, and says so once each:

    * collapse: having been below 80% of ``zero_loss``, what a network that outputs zero scores (the target's mean
      square: for eps-prediction the noise's variance, 1), the loss is back within 5% of it at two log lines in a row
      (a network that learns slowly, near that level from the start, is not flagged);
    * divergence: the loss rises at ``rising`` log lines in a row, by a third or more in all.

    Both only from step ``after`` on (the end of the warm-up, and at least 100 steps: a network starts near zero)."""

    def __init__(self, zero_loss: float, after: int, rising: int = 3):
        self.zero_loss, self.after, self.rising = zero_loss, after, rising
        self.best, self.at_zero, self.history, self.said = math.inf, 0, [], set()

    def __call__(self, step: int, loss: float | None) -> str | None:
        """The warning for the loss logged at ``step`` (None: nothing to say, or said before)."""
        if loss is None:
            return None
        learned = self.best <= 0.8 * self.zero_loss
        self.best = min(self.best, loss)
        if step < self.after:
            return None
        self.at_zero = self.at_zero + 1 if learned and abs(loss - self.zero_loss) <= 0.05 * self.zero_loss else 0
        self.history = (self.history + [loss])[-(self.rising + 1):]
        if self.at_zero >= 2 and "collapse" not in self.said:
            self.said.add("collapse")
            return (f"step {step}: the loss went back up to {loss:.4g}, what a network that outputs zero scores ({self.zero_loss:.4g}): "
                    f"it has collapsed to predicting zero")
        h = self.history
        if len(h) > self.rising and all(b > a for a, b in zip(h, h[1:])) and h[-1] >= 4 / 3 * h[0] and "rising" not in self.said:
            self.said.add("rising")
            return f"step {step}: the loss rose at {self.rising} log lines in a row, from {h[0]:.4g} to {h[-1]:.4g}: training is diverging"
        return None
