"""One background rebuild at a time, of the newest thing asked for.

``serve`` rebuilds its drift monitor for every head version it picks up: an eigendecomposition and the alarm level's
null windows, about a second of CPU at d = 1280.  Versions can arrive faster than that (an update, then its
background alpha search), and a thread per version would run the builds side by side, every one but the last
wasted, and could finish out of order.  Here the versions asked for while a build runs collapse into one more
build, of the newest, and results are handed over in the order they were asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestRebuild(Generic[T]):
    """``request(item)`` asks for ``work(item)`` in a daemon thread.  At most one ``work`` runs at a time; items
    requested while it runs replace one another, and the newest runs next.  So an older item never runs after a
    newer one, and whatever ``work`` publishes is never replaced by a staler result.  ``work`` should handle its
    own failures (the service logs them); one that escapes ends that thread, and the next request starts again."""

    def __init__(self, work: Callable[[T], None], name: str):
        self._work, self._name = work, name
        self._lock = threading.Lock()
        self._pending: tuple[T] | None = None       # the newest item asked for and not yet taken (a 1-tuple)
        self._running = False
        self._idle = threading.Event()
        self._idle.set()

    def request(self, item: T) -> None:
        with self._lock:
            self._pending = (item,)
            if self._running:
                return                                   # the running thread takes it when its build ends
            self._running = True
            self._idle.clear()
        threading.Thread(target=self._run, name=self._name, daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:                         # checked and given up under one lock: no item is stranded
                    if self._pending is None:
                        self._stop()
                        return
                    (item,), self._pending = self._pending, None
                self._work(item)
        except BaseException:
            with self._lock:
                self._stop()
            raise

    def _stop(self) -> None:
        self._running = False
        self._idle.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no build runs or waits (True), or ``timeout`` seconds (False)."""
        return self._idle.wait(timeout)
