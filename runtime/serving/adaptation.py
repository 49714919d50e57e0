"""``serve --adapt-on-drift``: adaptation on the served stream when drift is detected, reset when it harms.

The adapter keeps the features of the last ``window`` served inputs (a bounded ring: ``window`` x feature
dimension floats, nothing else grows). While the stream is not adapted, an alarm starts an adaptation: the
label-free methods of :mod:`~edgetl.runtime.learning.adapters` are fitted on the window and the first the guard
accepts answers from then on. The alarm is the seam to a drift monitor: any object with a boolean ``alarm``
attribute, or a callable returning one (``serve``'s drift statistics); without one, the adapter raises its own
alarm when the window's drift score (:func:`~edgetl.runtime.learning.adapters.feature_drift`) passes its alarm
level.

While adapted, every ``check_every`` inputs the guard is asked again on the window, the adapted answers against
the unadapted head's: when it objects (answers changed en masse, classes crowded, features moved away from the
source), the adapter resets to the unadapted head, as continual test-time adaptation must to avoid collapse on
long streams (RDumb, Press et al. 2023). A newly committed head version resets it too (the adaptation was fitted
to the previous one). The adaptation lives in the service's memory: nothing is committed to the store
(``edgetl-rt adapt`` commits), so a restart serves the committed head.

After a committed ``edgetl-rt adapt`` the served head is itself an adaptation. The stream never fits on top of
it: as ``adapt`` does, it fits from the head that adaptation started from (:func:`stream_head`: the nearest
version that is not an adaptation) on the raw features, against the same source statistics, and the guard
compares the result with the committed adaptation's answers; so a stream adaptation replaces the committed one
for as long as it is accepted, and a reset returns to it. When that starting head is no longer kept, the stream
does not adapt: adapting an adapted head again compounds the shift.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..bundle.folder import HeadState
from ..bundle.heads import Head
from ..learning.adapt import adapted, source_version
from ..learning.adapters import (
    AUTO_BY_MODALITY,
    Candidate,
    DriftScore,
    SourceStatistics,
    choose,
    default_alarm,
    feature_drift,
    signals,
    verdict,
)

DEFAULT_WINDOW = 256
DEFAULT_CHECK_EVERY = 64


@dataclass
class StreamStats:
    """What the adapter did: adaptations taken, refused and reset (``/metrics`` and the tests read them)."""

    adapted: int = 0
    refused: int = 0
    resets: int = 0
    active: bool = False
    method: str | None = None
    last_reason: str = ""


def _alarm_of(trigger) -> Callable[[], bool] | None:
    if trigger is None:
        return None
    if callable(trigger):
        return lambda: bool(trigger())
    return lambda: bool(trigger.alarm)


#: The served version before the first request (a bundle without a store serves version None).
_UNSEEN = object()

class StreamAdapter:
    """Bounded, thread-safe adaptation of a served stream; :meth:`logits` is the one call the service makes."""

    def __init__(self, source_of: Callable[[HeadState], SourceStatistics | None], dim: int,
                 window: int = DEFAULT_WINDOW, check_every: int = DEFAULT_CHECK_EVERY, trigger=None,
                 drift: DriftScore | None = None, alarm: float | None = None, methods: tuple[str, ...] | None = None,
                 modality: str = "image", on_outcome: Callable[[str, StreamStats], None] = lambda outcome, stats: None,
                 head_of: Callable[[HeadState], Head | None] = lambda state: state.head):
        """``source_of(state)``: the source statistics of a head version (read again when the version changes);
        ``head_of(state)``: the head adaptations are fitted from (:func:`stream_head` in ``serve``; None: do not
        adapt this version);
        ``trigger``: the drift monitor (an object with ``.alarm`` or a callable; None: the window's own drift
        score against ``alarm``); ``drift``: another drift score for the guard; ``on_outcome(outcome, stats)``:
        called once per outcome (``adapted``, ``refused``, ``reset``) under the adapter's lock, so a counter fed
        by it counts each outcome once however many requests arrive together."""
        self.source_of, self.window, self.check_every = source_of, int(window), int(check_every)
        self.on_outcome, self.head_of = on_outcome, head_of
        self._base: Head | None = None        # what adaptations of the served version are fitted from
        self.methods = methods or AUTO_BY_MODALITY[modality]
        self.trigger = trigger
        self._drift, self._alarm = drift, alarm
        self.source: SourceStatistics | None = None
        self._score: DriftScore | None = None
        self._rows = np.zeros((self.window, dim), np.float32)
        # rows remembered, where the next goes, rows since the last check and since the adapter was fitted
        self._filled = self._next = self._since_check = self._unseen = 0
        self._adapted: Candidate | None = None
        self._version: object = _UNSEEN
        self._lock = threading.Lock()
        self.stats = StreamStats()

    @property
    def trigger(self):
        return self._trigger_object

    @trigger.setter
    def trigger(self, trigger) -> None:
        """The seam to a drift monitor: set it at any time (``service.stream_adapter.trigger = monitor``)."""
        self._trigger_object, self._trigger = trigger, _alarm_of(trigger)

    def _remember(self, features: np.ndarray) -> None:
        for row in features[-self.window:]:
            self._rows[self._next] = row
            self._next = (self._next + 1) % self.window
        self._filled = min(self.window, self._filled + len(features))
        self._since_check += len(features)
        self._unseen = min(self.window, self._unseen + len(features))

    def _newest(self, count: int) -> np.ndarray:
        """The ``count`` rows remembered last (at most the window)."""
        return self._rows[(self._next - 1 - np.arange(min(count, self._filled))) % self.window]

    def _alarmed(self, recent: np.ndarray) -> bool:
        if self._trigger is not None:
            return self._trigger()
        alarm = self._alarm if self._alarm is not None else default_alarm(len(recent))
        return self._score(recent) >= alarm

    def reset(self, reason: str) -> None:
        """Back to the unadapted head (the window is kept: it is what the next alarm adapts on)."""
        with self._lock:
            self._reset(reason)

    def _reset(self, reason: str) -> None:
        was_adapted = self._adapted is not None
        self._adapted, self.stats.active, self.stats.method, self.stats.last_reason = None, False, None, reason
        if was_adapted:
            self.stats.resets += 1
            self.on_outcome("reset", self.stats)

    def logits(self, features: np.ndarray, state: HeadState) -> np.ndarray:
        """The logits to answer ``features`` (raw backbone output) with, adapting or resetting on the way."""
        served = Candidate("served", state.adapter, state.head)
        with self._lock:
            if state.version != self._version:
                # read first and assign together: a failed read leaves no half-switched state, and a version
                # without source statistics is not read again on every request
                source, base = self.source_of(state), self.head_of(state)
                self._reset(f"head version {state.version} committed")
                self._version, self.source, self._base = state.version, source, base
                self._score = None if source is None else (self._drift or feature_drift(source))
            self._remember(np.asarray(features, np.float32))
            recent = self._rows[:self._filled]
            ready = self.source is not None and self._base is not None
            if ready and self._filled >= self.window and self._since_check >= self.check_every:
                self._since_check = 0
                if self._adapted is None:
                    if self._alarmed(recent):
                        self._adapt(served, recent)
                elif self._unseen:
                    self._check(served, self._newest(self._unseen))     # rows the adapter was not fitted on
            adapted = self._adapted
        return (adapted or served).logits(features)

    def _adapt(self, served: Candidate, recent: np.ndarray) -> None:
        choice = choose(self._base, self.source, recent, self.methods, reference=served, drift=self._drift,
                        alarm=0.0 if self._trigger is not None else self._alarm)
        self.stats.last_reason = choice.reason
        if choice.helped:
            self._adapted, self.stats.active, self.stats.method = choice.best, True, choice.method
            self._unseen = 0
            self.stats.adapted += 1
            self.on_outcome("adapted", self.stats)
        else:
            self.stats.refused += 1
            self.on_outcome("refused", self.stats)

    def _check(self, served: Candidate, recent: np.ndarray) -> None:
        reference = served.logits(recent)
        served = signals(Candidate("served", served.adapter, served.head), reference, recent, self._score)
        mine = signals(self._adapted, reference, recent, self._score)
        why = verdict(mine, served)
        if why is not None:
            self._reset(f"reset: {why}")


def stream_source(bundle, state: HeadState) -> SourceStatistics | None:
    """The source statistics of the served head: the store's ridge statistics of its version, else the ridge
    statistics the bundle's head was exported with, else None (nothing to adapt to)."""
    store = bundle.store
    if store.exists and state.version is not None:
        ridge = store.state(store.version(state.version)).ridge
    else:
        ridge = getattr(bundle.exported_head, "statistics", None)
    if ridge is None or ridge.count < 2:
        return None
    return SourceStatistics.from_ridge(ridge)


def stream_head(bundle, state: HeadState) -> Head | None:
    """The head the stream adapts from: the served head, unless its version is a committed adaptation; then the
    head of the nearest version that is not one (what ``edgetl-rt adapt`` fits from); None when no unadapted head
    is kept: that version was pruned, or the served head kept an adaptation's adapter through an update or a
    rollback (the stream does not adapt an adapted head again)."""
    store = bundle.store
    if state.version is None or not store.exists:
        return state.head
    served = store.version(state.version)
    base = source_version(store, served)
    if adapted(base):
        return None
    return state.head if base.version == served.version else store.head(base)
