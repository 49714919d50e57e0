"""What a process keeps between learning transactions on one bundle: the store's rows and the learners.

Segments are immutable, so a :class:`LearningSession` reads each (and checks its sha256) once; the learners of the
version it last committed or loaded stay in memory with the ridge system factorised.  In a process that stays up
(``serve``, :class:`~edgetl.runtime.learning.update.Learner`) a one-image ridge update then costs one backbone pass
plus a few milliseconds of head maths; a one-shot ``edgetl-rt update`` rebuilds the statistics from the store (the
stored rows' Gram matrix, O(n·d²)) and solves once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..bundle.heads import Head
from ..bundle.store import FeatureStore, Samples, Version
from ..errors import BundleError
from .learners import NCMLearner, RidgeLearner


@dataclass
class _Segment:
    """A stored segment as a session keeps it: its rows, its held-out rows and its keys."""

    stamp: tuple[int, int, int]
    samples: Samples
    holdout: Samples
    keys: frozenset[str]


@dataclass
class Learned:
    """The learners of one committed version, kept by a :class:`LearningSession` for the next update, with the
    head's logits on that version's held-out rows when known (the guard's "before")."""

    version: int
    created: str
    ridge: RidgeLearner
    ncm: NCMLearner
    head: Head
    holdout_logits: np.ndarray | None = None


class LearningSession:
    """What one process keeps between transactions on a bundle's store (see :mod:`edgetl.runtime.learning.session`).

    Segments are immutable, so each is read (and checked against its sha256) once; a file replaced by another
    writer is noticed by its inode, size and mtime.  The learners follow the version this session last committed
    or loaded; when another process committed since, they are rebuilt from the store.  ``keep_factor`` keeps the
    ridge system factorised (worth its one O(d³) decomposition when several updates follow).  An update's cost
    beyond the ridge maths is then O(held-out rows x d x classes) for the guard, not O(stored rows).
    Transactions run under the store's lock; a process sharing one session between threads serialises them
    (``serve`` holds a lock around each).
    """

    def __init__(self, keep_factor: bool = True):
        self.keep_factor = keep_factor
        self._segments: dict[int, _Segment] = {}
        self._learned: Learned | None = None

    def parts(self, store: FeatureStore, version: Version) -> list[tuple[int, Samples]]:
        parts = []
        for number in version.segments:
            path = store.root / "segments" / f"{number:06d}.npz"
            try:
                info = os.stat(path)
            except FileNotFoundError:
                raise BundleError(f"store segment {path} of version {version.version} is missing; roll back with "
                                  f"edgetl-rt rollback {store.bundle} --to VERSION") from None
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._segments.get(number)
            if cached is None or cached.stamp != stamp:
                samples = store.segment_part(version, number)
                cached = _Segment(stamp, samples, samples.select(samples.holdout), frozenset(samples.keys.tolist()))
                self._segments[number] = cached
            parts.append((number, cached.samples))
        for number in set(self._segments) - set(version.segments):
            del self._segments[number]
        return parts

    def stored(self, parts: list[tuple[int, Samples]], key: str) -> bool:
        """Whether an image (its key) is among ``parts``' rows."""
        return any(key in self._segments[number].keys for number, _ in parts)

    def holdout(self, parts: list[tuple[int, Samples]], dim: int) -> Samples:
        """The held-out rows of ``parts``, in age order."""
        return Samples.concat([self._segments[number].holdout for number, _ in parts], dim)

    def learned(self, store: FeatureStore, version: Version, parts: list[tuple[int, Samples]],
                dim: int) -> Learned:
        """The learners of ``version``: kept from the last transaction, or rebuilt (residual plus rows)."""
        kept = self._learned
        if kept is None or (kept.version, kept.created) != (version.version, version.created):
            full = store.state(version, dim, parts)
            ridge = RidgeLearner(dim, version.classes, full.alpha, full.ridge, keep_factor=self.keep_factor)
            ridge.alpha_selected_at = full.alpha_selected_at
            ncm = NCMLearner(dim, version.classes, full.ncm_sums, full.ncm_counts)
            self._learned = Learned(version.version, version.created, ridge, ncm, store.head(version))
        return self._learned

    def prepare(self, store: FeatureStore, dim: int) -> None:
        """Load the current version's rows and learners and factorise the ridge system now (a service does this
        in the background at start, so its first update is as fast as the next)."""
        if store.exists:
            version = store.version()
            learned = self.learned(store, version, self.parts(store, version), dim)
            if self.keep_factor:
                learned.ridge.system.factorize()

    def committed(self, version: Version, head: Head, holdout_logits: np.ndarray | None) -> None:
        """The learners now hold ``version`` (committed with ``head``; its logits on the version's held-out rows,
        None when unknown)."""
        self._learned.version, self._learned.created, self._learned.head = version.version, version.created, head
        self._learned.holdout_logits = holdout_logits

    def forget(self) -> None:
        """Drop the learners (after a transaction that failed half-way through changing them)."""
        self._learned = None
