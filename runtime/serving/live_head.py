"""The head that answers, kept current while serving: each committed version is picked up without a restart.

A commit (``edgetl-rt update``, ``rollback`` or ``adapt`` in another process, or the service's own update route)
ends by renaming a new ``store/CURRENT`` into place, so the service watches that one file: a poll thread compares
its inode and modification time, and on a change loads the new version completely (head, classes, adapter,
checked against their sha256) before swapping one reference.  A request takes that reference once and uses it for
all its images, so it is answered by exactly one committed version, never a mix; a version that cannot be read
(damaged, or pruned under the reader) leaves the current head answering and is retried on the next poll.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..bundle.folder import Bundle, HeadState
from ..errors import EdgetlError


def head_version(state: HeadState) -> int:
    """The version number a response reports: the store's, or 0 for the head the bundle was exported with (the
    store's version 0 is that head once the device first learns)."""
    return 0 if state.version is None else state.version


class LiveHead:
    """``state`` is the current :class:`HeadState`; ``on_change(state)`` runs after each swap."""

    def __init__(self, bundle: Bundle, poll_s: float = 0.05,
                 on_change: Callable[[HeadState], None] = lambda state: None,
                 on_error: Callable[[str], None] = lambda message: None):
        self.bundle, self.poll_s, self.on_change, self.on_error = bundle, poll_s, on_change, on_error
        self._current = bundle.store.root / "CURRENT"
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self.state: HeadState = bundle.current_head()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="edgetl-head-watch", daemon=True)

    def start(self) -> LiveHead:
        self._thread.start()
        return self

    def _read_stamp(self) -> tuple | None:
        """The file's identity and its few bytes (a coarse-timestamp file system cannot hide a commit)."""
        try:
            info = os.stat(self._current)
            content = self._current.read_bytes()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, content

    def refresh(self, force: bool = False) -> bool:
        """Load the committed version when ``CURRENT`` changed (or ``force``); True when the head was swapped."""
        with self._lock:
            stamp = self._read_stamp()       # read before the version: a commit in between is seen next time
            if stamp == self._stamp and not force:
                return False
            state = self.bundle.current_head()
            changed = state.version != self.state.version or force
            self.state, self._stamp = state, stamp
        if changed:
            self.on_change(state)
        return changed

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception as exc:     # noqa: BLE001 - the watcher must outlive any one failed read
                reason = str(exc) if isinstance(exc, EdgetlError) else f"{type(exc).__name__}: {exc}"
                self.on_error(f"head version not picked up (the current one keeps answering): {reason}")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
