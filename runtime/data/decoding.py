"""One bounded place to decode images: a fixed pool of threads, a budget of decoded pixels, and a budget of
preprocessed inputs waiting for the backbone.

A service decodes what clients send, so what it holds at once must be bounded by its configuration, not by the
clients.  Every decode of ``edgetl-rt serve`` (one image or many; infer, classify and the update route) runs on
one :class:`DecodePool`'s threads and holds its pixels (read from the image's header, before any decoding) in the
pool's pixel :class:`Budget` until its crop is made; a request's preprocessed inputs (float32, N x 3 x S x S) hold
their bytes in the pool's input budget until the request has its features.  A request waits for room at most
until its deadline, then gets :class:`~edgetl.runtime.errors.DecodeBusyError` (503); an image larger than the
whole pixel budget is refused as a bad image.  ``predict`` and ``evaluate`` decode with the reader's own small
pool instead.

The two budgets are separate, so no request waits for one while holding what others wait for in the same one: a
request holds its inputs' bytes (reserved at once, before its first decode) while its images wait for pixels, and
pixels are only ever held by a decode that is running.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, TimeoutError as FutureTimeout, wait
from contextlib import ExitStack, contextmanager
from typing import TypeVar

from ..errors import DecodeBusyError, ImageDecodeError

T = TypeVar("T")
R = TypeVar("R")


class Budget:
    """At most ``capacity`` units (pixels, bytes) held at once.  Waiting claims are granted smallest first (ties in
    order of arrival): a normal image is not held up behind a queue of images at the pixel limit, and a large claim
    waits at most until its deadline.  ``what`` names the unit in messages."""

    def __init__(self, capacity: int, what: str = "pixels"):
        if capacity < 1:
            raise ValueError(f"a budget must be at least 1, got {capacity}")
        self.capacity, self.what = capacity, what
        self.in_use = 0
        self.peak = 0          # the most ever held at once (for tests and metrics)
        self._waiting: list[tuple[int, int]] = []       # a heap of (amount, arrival)
        self._arrivals = itertools.count()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, amount: int, deadline: float | None = None, whole: bool = False) -> Iterator[int]:
        """Hold ``amount`` while the block runs (it receives what it holds).  Waits for room until ``deadline``
        (``time.monotonic()``; None: no limit), then raises :class:`DecodeBusyError`.  A claim larger than the
        whole budget is refused at once (an :class:`ImageDecodeError`, the caller names the image), or, with
        ``whole``, holds the whole budget: it runs alone."""
        amount = max(1, int(amount))
        if amount > self.capacity:
            if not whole:
                raise ImageDecodeError("<image>", f"{amount} {self.what} exceed the decode budget of {self.capacity} "
                                                  f"{self.what} (the service's --decode-pixels)")
            amount = self.capacity
        claim = (amount, next(self._arrivals))
        with self._changed:
            heapq.heappush(self._waiting, claim)
            try:
                while self._waiting[0] != claim or self.in_use + amount > self.capacity:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise DecodeBusyError(
                            f"the service is busy with other requests' images ({self.in_use} of {self.capacity} "
                            f"{self.what} in use); this request waited past its deadline for {amount}: retry later")
                    self._changed.wait(left)
            finally:
                self._waiting.remove(claim)
                heapq.heapify(self._waiting)
                self._changed.notify_all()         # the next in line may fit now (or be first now)
            self.in_use += amount
            self.peak = max(self.peak, self.in_use)
        try:
            yield amount
        finally:
            with self._changed:
                self.in_use -= amount
                self._changed.notify_all()


#: Images up to this many pixels by their headers are small: one alone in a request is decoded in the request's own
#: thread, several may also take the pool's express thread (which takes nothing larger), both holding pixels from
#: a budget of :data:`EXPRESS_BUDGET` of their own, so a normal image is answered while every pool thread decodes
#: images at the pixel limit (a 4096 x 4096 JPEG 2000 takes a core a second and more).
EXPRESS_PIXELS = 1 << 20
#: The small images' own pixel budget (4 MP: about 100 MB at the costliest decode).
EXPRESS_BUDGET = 4 << 20


class DecodePool:
    """``workers`` decoding threads and one express thread, a budget of ``pixels`` decoded at once (small images
    hold their own, :data:`EXPRESS_BUDGET`) and one of ``input_bytes`` of preprocessed inputs held at once, shared by
    every request.

    Work waiting for a thread is taken in turn across requests, then smallest image first: each request's first
    image before any request's second, so a request of many images shares the threads with the others rather than
    queueing them behind all of its own, and a normal image before one at the pixel limit.

    Only a request's one small image (:data:`EXPRESS_PIXELS`) decodes in the request's own thread: handing it to a
    pool thread cost 10 % of the throughput of one-image requests of 64 px digits (8 clients, 2 cores).  Larger
    images never do: the C allocator keeps an arena per thread that decodes, and what each retains after a large
    image is not the next thread's to reuse; decoding every image in the requests' threads raised the memory
    test's peak over its baseline from 110-118 MB to 119-207 MB (three runs each)."""

    def __init__(self, workers: int, pixels: int, input_bytes: int, name: str = "edgetl-decode",
                 express_pixels: int = EXPRESS_PIXELS, express_budget: int = EXPRESS_BUDGET):
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one thread, got {workers}")
        self.workers = workers
        self.pixels = Budget(pixels, "pixels")
        self.express = Budget(min(express_budget, pixels), "pixels")
        self.express_pixels = min(express_pixels, self.express.capacity)
        self.inputs = Budget(input_bytes, "bytes of inputs")
        self._small: list = []           # heaps of (rank, order, future, work, item): small images, and the rest
        self._large: list = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._local = threading.local()  # .express: this thread decodes a small image
        self._express_thread = threading.Thread(target=self._work, args=(True,), name=f"{name}-express", daemon=True)
        self._threads = [threading.Thread(target=self._work, args=(False,), name=f"{name}-{i}", daemon=True)
                         for i in range(workers)] + [self._express_thread]
        for thread in self._threads:
            thread.start()

    def lane(self, deadline: float | None) -> DecodeLane:
        """One request's way into the pool: its waits end at ``deadline``; use it as a context manager."""
        return DecodeLane(self, deadline)

    def budget(self) -> Budget:
        """The pixel budget of the thread calling: the small images' own (on the express thread, or a request's
        thread decoding its one small image), or the pool's."""
        express = threading.current_thread() is self._express_thread or getattr(self._local, "express", False)
        return self.express if express else self.pixels

    def run_small(self, work: Callable[[T], R], item: T) -> R:
        """``work(item)`` in the calling thread, as a small image (its pixels held from the small images' budget)."""
        self._local.express = True
        try:
            return work(item)
        finally:
            self._local.express = False

    def submit(self, rank: tuple[int, int], work: Callable[[T], R], item: T) -> Future:
        """``work(item)`` on a pool thread, taken by ``rank`` (turn, pixels: lower first; ties in order of
        submission); an image of known pixels up to ``express_pixels`` may take the express thread."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the decode pool is closed")
            queue = self._small if 0 < rank[1] <= self.express_pixels else self._large
            heapq.heappush(queue, (rank, next(self._order), future, work, item))
            self._ready.notify_all()
        return future

    def _next(self, express: bool):
        queues = [q for q in ((self._small,) if express else (self._small, self._large)) if q]
        return heapq.heappop(min(queues, key=lambda q: q[0][:2])) if queues else None

    def _work(self, express: bool) -> None:
        while True:
            with self._ready:
                while (task := self._next(express)) is None and not self._closed:
                    self._ready.wait()
                if task is None:
                    return
            _, _, future, work, item = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work(item))
            except BaseException as exc:      # noqa: BLE001 - the caller's to raise, with its own context
                future.set_exception(exc)

    def close(self) -> None:
        """Cancel what has not started, let what runs finish, stop the threads."""
        with self._ready:
            self._closed = True
            for queue in (self._small, self._large):
                for _, _, future, _, _ in queue:
                    future.cancel()
                queue.clear()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()


class DecodeLane:
    """One request's use of a :class:`DecodePool`: work runs on the pool's threads (taken in turn with other
    requests'), pixels are held from the pool's budget while an image decodes, the request's inputs from the input
    budget until the lane closes, and every wait (for a thread, pixels or input room) ends at the request's
    deadline."""

    def __init__(self, pool: DecodePool, deadline: float | None):
        self.pool, self.deadline = pool, deadline
        self._kept = ExitStack()
        self._submitted = 0

    def __enter__(self) -> DecodeLane:
        return self

    def __exit__(self, *exc) -> None:
        self._kept.close()

    def keep(self, nbytes: int) -> None:
        """Hold ``nbytes`` of the input budget until the lane closes (a request larger than the whole budget
        holds all of it: it waits to be alone)."""
        self._kept.enter_context(self.pool.inputs.hold(nbytes, self.deadline, whole=True))

    def hold(self, pixels: int):
        """The pool's pixels (the small images' own for a small image), held until the block ends (see
        :meth:`Budget.hold`)."""
        return self.pool.budget().hold(pixels, self.deadline)

    def submit(self, work: Callable[[T], R], item: T, pixels: int = 0) -> Future:
        """``work(item)`` on the pool: this request's n-th item waits behind every request's earlier ones, and
        among those of the same turn behind smaller images (``pixels``: its header's, when known)."""
        rank = (self._submitted, pixels)
        self._submitted += 1
        return self.pool.submit(rank, work, item)

    def result(self, future: Future) -> R:
        """The future's result, waiting at most until the deadline (then it is cancelled if it has not started,
        and :class:`DecodeBusyError` is raised)."""
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        try:
            return future.result(timeout=left)
        except (FutureTimeout, CancelledError):
            future.cancel()
            raise DecodeBusyError("the service is busy decoding other requests' images; this request waited past "
                                  "its deadline for a decoding thread: retry later") from None

    def map(self, work: Callable[[T], R], items: Sequence[T], pixels: Callable[[int], int] | None = None) -> list[R]:
        """``work`` of every item on the pool's threads, in order (``pixels(i)``: item i's size by its header, for
        the pool's order; one small item alone runs in this thread); the first failure cancels what has not
        started, waits for what has (so nothing of this request runs on after it is answered), and is raised."""
        sizes = [pixels(i) if pixels else 0 for i in range(len(items))]
        if len(items) == 1 and 0 < sizes[0] <= self.pool.express_pixels:
            return [self.pool.run_small(work, items[0])]
        futures = [self.submit(work, item, sizes[i]) for i, item in enumerate(items)]
        try:
            return [self.result(future) for future in futures]
        finally:
            wait([future for future in futures if not future.cancel()])
