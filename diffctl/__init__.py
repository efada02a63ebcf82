"""diffctl: config-driven command-line tool to train, sample and evaluate diffusion models.

From Python: ``diffctl.train([...])``, ``diffctl.load(...)``, ``diffctl.evaluate(...)`` and ``diffctl.schedules.get(...)`` (see
``diffctl.api``); they are imported on first use, so ``diffctl --help`` stays fast.
"""

__version__ = "0.1.0"

_API = ("load", "train", "evaluate", "schedules", "Run")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffctl' has no attribute {name!r}")
