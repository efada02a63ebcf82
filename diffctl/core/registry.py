"""One registry mechanism for everything chosen by name in a config: schedules, samplers, losses,
models, datasets and metrics.

A registered function (or class) is the single definition of its options: its keyword-only
parameters are the fields of its config group, with their types and defaults (``diffctl.config``
turns them into the typed schema Hydra checks), and ``build(cfg, *inputs)`` calls it with the
config's values.  Positional parameters are what the caller supplies (the data shape of a model,
the step count of a sampler).
"""

from __future__ import annotations

import typing
from typing import Any, Callable, Iterator, Mapping, Optional


class Registry:
    """``name -> entry``; ``key`` is the config field that names the choice (``name``, or ``arch`` for models).

    ``make(fn, **meta)``, when given, turns a registered function and the decorator's keywords into the
    stored entry (the metric registry stores ``Metric`` records); otherwise the function is stored.
    ``inputs``: keyword-only parameters that callers supply, not the config (a sampler's ``noise``).
    """

    def __init__(self, kind: str, key: str = "name", make: Optional[Callable] = None, inputs: tuple = ()):
        self.kind, self.key, self.make, self.inputs = kind, key, make, tuple(inputs)
        self._entries: dict[str, Any] = {}
        self._functions: dict[str, Callable] = {}

    def register(self, *names: str, **meta):
        """Decorator: register the function under each of ``names`` (a shared reader of several datasets)."""

        def deco(fn):
            for name in names:
                if name in self._entries:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._entries[name] = self.make(fn, **meta) if self.make else fn
                self._functions[name] = fn
            return fn

        return deco

    def __getitem__(self, name: str):
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries  # a config value may be anything, a dict included

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple:
        return tuple(self._entries)

    def options(self, name: str) -> dict[str, tuple[Any, Any]]:
        """The config fields of ``name``: ``{parameter: (type, default)}`` of its keyword-only parameters."""
        self[name]
        fn = self._functions[name]
        fn = fn.__init__ if isinstance(fn, type) else fn
        while hasattr(fn, "__wrapped__"):  # decorated (torch.no_grad): the function itself
            fn = fn.__wrapped__
        code, defaults, hints = fn.__code__, fn.__kwdefaults__ or {}, typing.get_type_hints(fn)
        names = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]  # the keyword-only parameters
        return {k: (hints.get(k, Any), defaults[k]) for k in names if k not in self.inputs}

    def values(self, cfg: Mapping) -> dict:
        """The config's values of the options of its choice ``cfg[key]``; an option the config lacks (one
        written before the option existed) is left out, so it keeps its default."""
        return {k: cfg[k] for k in self.options(cfg[self.key]) if k in cfg}

    def build(self, cfg: Mapping, *inputs, **more):
        """Call the entry ``cfg[key]`` with ``inputs``, the config's values of its options and ``more``."""
        values = self.values(cfg)  # an unknown choice: ValueError naming the registered ones
        return self._functions[cfg[self.key]](*inputs, **values, **more)
