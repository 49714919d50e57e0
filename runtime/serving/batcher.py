"""Dynamic batching: requests that arrive within ``max_wait`` of each other run as one backbone batch.

One thread owns the backbone (engines are then never entered from two threads) and takes work from a queue: the
first waiting request opens a batch, which then collects more for at most ``max_wait`` seconds or until
``max_batch`` images, and only while another request is on its way (being decoded under :meth:`arriving`): a
request alone runs at once, so batching costs no latency when there is nothing to batch with.  A request larger than
``max_batch`` is split into chunks that each join a batch.  Each request learns the batches it ran in (size, queue wait,
compute time), so batching is measurable per request.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class BatchRecord:
    """One backbone batch: its sequence number, images, and the seconds it took."""

    id: int
    size: int
    compute_s: float


@dataclass
class Ran:
    """A request's features and the batches its images ran in (with the longest queue wait)."""

    features: np.ndarray
    batches: list[BatchRecord]
    queue_s: float


@dataclass
class _Job:
    images: np.ndarray
    future: Future
    enqueued: float


class DynamicBatcher:
    """Run ``run(images) -> features`` on batches assembled from concurrent :meth:`submit` calls.

    ``observe`` receives each :class:`BatchRecord` (for metrics); ``join`` makes one batch of the waiting
    requests' inputs.  :meth:`close` finishes what is queued, then
    stops the thread: requests in flight are answered, never dropped.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int = 8, max_wait_s: float = 0.002,
                 observe: Callable[[BatchRecord], None] = lambda record: None,
                 join: Callable[[list[np.ndarray]], np.ndarray] = np.concatenate):
        if max_batch < 1:
            raise ConfigError(f"must be at least 1, got {max_batch}", option="max_batch")
        if max_wait_s < 0:
            raise ConfigError(f"must not be negative, got {max_wait_s * 1000:g}", option="max_wait_ms")
        self.run, self.max_batch, self.max_wait_s, self.observe = run, max_batch, max_wait_s, observe
        self.join = join       # how requests' inputs become one batch (a text model's are padded to one length)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        self._batches = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="edgetl-batcher", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def arriving(self):
        """Around a request's decoding: a batch being assembled waits for it (up to ``max_wait``)."""
        with self._arriving_lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._arriving_lock:
                self._arriving -= 1

    def features(self, images: np.ndarray) -> Ran:
        """The backbone features of ``images`` (N, 3, H, W), batched with whatever else is waiting."""
        chunks = [images[i:i + self.max_batch] for i in range(0, len(images), self.max_batch)]
        jobs = [_Job(chunk, Future(), time.perf_counter()) for chunk in chunks]
        with self._arriving_lock:        # never queued behind the stop sentinel
            if self._closed:
                raise RuntimeError("the batcher is closed")
            for job in jobs:
                self._queue.put(job)
        results = [job.future.result() for job in jobs]
        return Ran(np.concatenate([r[0] for r in results]), [r[1] for r in results], max(r[2] for r in results))

    def close(self) -> None:
        """Answer every queued request, then stop."""
        with self._arriving_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _next(self, timeout: float | None) -> _Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and what joins it within the wait; True when the stop sentinel was met."""
        jobs, count = [first], len(first.images)
        deadline = time.perf_counter() + self.max_wait_s
        while count < self.max_batch:
            if self._arriving == 0 and self._carry is None and self._queue.empty():
                break                               # nothing queued, nothing on its way: run now
            try:
                job = self._next(max(deadline - time.perf_counter(), 0.0))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if count + len(job.images) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            count += len(job.images)
        return jobs, False

    def _loop(self) -> None:
        stopping = False
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            elif stopping:                      # after close(): finish what is queued, then stop
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self._queue.get()
            if first is None:
                stopping = True
                continue
            jobs, met_stop = self._collect(first)
            stopping = stopping or met_stop
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            features = self.run(self.join([job.images for job in jobs]))
            compute = time.perf_counter() - started
            self._batches += 1
            record = BatchRecord(self._batches, sum(len(job.images) for job in jobs), compute)
            self.observe(record)
            offset = 0
            for job in jobs:
                job.future.set_result((features[offset:offset + len(job.images)], record, started - job.enqueued))
                offset += len(job.images)
        except BaseException as exc:     # the requests fail, the batcher does not: every caller gets an answer
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
