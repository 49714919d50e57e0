"""Lazy public names of a package (PEP 562): importing a package costs nothing until one of its names is used.

A package lists where each public name lives (``{"EdgeModel": ".inference.model"}``); the module is imported on
the first use of one of its names, so ``edgetl-rt predict`` loads only what it runs, whatever its imports name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_names(package: str, table: dict[str, str], fallback: Callable[[str, str], object] | None = None):
    """``__getattr__`` and ``__dir__`` for ``package``: ``table`` maps a name to the (relative) module that defines
    it; ``fallback(package, name)`` answers other names (or raises AttributeError), e.g. names of an older release."""
    def __getattr__(name: str):
        if name in table:
            module = importlib.import_module(table[name], package)
            value = getattr(module, name)
            importlib.import_module(package).__dict__[name] = value
            return value
        if fallback is not None:
            return fallback(package, name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(table))

    return __getattr__, __dir__
