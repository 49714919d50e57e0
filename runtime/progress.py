"""Progress reporting without a UI dependency in library code.

Library functions take a ``progress`` factory: ``progress(label, total)``
returns an object with ``update(n)`` and ``close()``.  The default reports
nothing; the CLIs pass :func:`terminal_progress`, which draws a bar on stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ProgressBar(Protocol):
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int], ProgressBar]


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def silent_progress(label: str, total: int) -> ProgressBar:
    return _Silent()


class _ClickBar:
    def __init__(self, label: str, total: int):
        import click

        self._bar = click.progressbar(length=total, label=label, file=click.get_text_stream("stderr"),
                                      show_pos=True, show_eta=True)
        self._bar.__enter__()

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.__exit__(None, None, None)


def terminal_progress(label: str, total: int) -> ProgressBar:
    """A progress bar on stderr (click draws it only when stderr is a terminal)."""
    return _ClickBar(label, total)
