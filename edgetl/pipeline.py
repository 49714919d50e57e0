"""The host's extraction pipeline: images decoded in worker processes while the engine runs, features streamed
to the cache.

Decoding and resizing are the CPU-heavy half of a backbone pass (a camera JPEG costs milliseconds; Lite0 on a GPU
costs microseconds per image), so they run in worker processes, as many as the host has usable cores, a few
batches ahead, and hand over the uint8 crops (a quarter of the float32 bytes).  The workers are torch's own
:class:`~torch.utils.data.DataLoader` (its worker processes, ordering, prefetching and pinned-memory thread), fed
by the runtime's decoding, so host and device still turn an image into the same pixels.  The consumer normalizes:
on a GPU after a non-blocking copy of the pinned batch, together with the layout (channels_last) and precision
(fp16 autocast); on the CPU with the runtime's own arithmetic
(:func:`~edgetl.runtime.data.preprocess.normalize_batch`), so features equal the single-image path bit for bit.
Outputs go to the cache entry as they come (:class:`~edgetl.cache.CacheWriter`), so memory stays flat however
many records there are.

Small jobs decode in threads of this process instead: starting workers would cost more than it saves.

When a runtime engine that allows it (ONNX Runtime) runs the pass on the CPU and decoding would run in threads
(small jobs, hosts of few cores), the pass runs in *lanes* instead (:func:`engine_lanes`): one thread per usable
core, each decoding a batch and running it on its own single-threaded copy of the engine.  A core then does one
thing at a time: with decoding threads beside one engine whose threads span every core, the engine's parallel
steps wait on whichever core decoding took (2 cores, clothing10 photos at 224 px, ONNX Runtime: 115-128
images/s that way, 143-150 in lanes over two runs of ``benchmarks/extraction_pipeline.py``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgetl.runtime.data.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig, crop, normalize_batch
from edgetl.runtime.data.reader import ReadReport, decode_or_error, prefetched
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.engines.backends import Backend
from edgetl.runtime.errors import ConfigError, ImageDecodeError

#: Below this many records, decoding runs in threads of this process (no worker start-up).
PROCESS_MIN_RECORDS = 256
#: Below this many usable cores, threads too: decoding and the engine share the same few cores, and measured
#: on 2 cores, worker processes only add contention (0.56 of the engine alone against 0.67 in threads).
PROCESS_MIN_CORES = 4


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class RawBatch:
    """Decoded, resized and cropped images (uint8 tensor, N x S x S x 3; pinned when asked), the positions of
    their records, and how many records the batch covered (bad ones skipped included)."""

    indices: list[int]
    pixels: torch.Tensor
    consumed: int


def _crop_or_error(record: ImageRecord, config: PreprocessConfig, max_pixels: int
                   ) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """The crop, or (source, reason) of a bad image (plain values: they cross the process boundary)."""
    result = decode_or_error(record, lambda image: crop(image, config, max_pixels))
    return (None, (result.source, result.reason)) if isinstance(result, ImageDecodeError) else (result, None)


def _chunk(start: int, results: list, size: int) -> tuple[list[int], torch.Tensor, list[tuple[str, str]], int]:
    """A batch from the (crop, error) pairs of records ``start``, ``start + 1``, ...: positions kept, stacked
    crops, errors, records covered."""
    kept, crops, errors = [], [], []
    for position, (pixels, error) in enumerate(results):
        if error is None:
            kept.append(start + position)
            crops.append(pixels)
        else:
            errors.append(error)
    stacked = torch.from_numpy(np.stack(crops)) if crops else torch.zeros((0, size, size, 3), dtype=torch.uint8)
    return kept, stacked, errors, len(results)


class _Crops(Dataset):
    def __init__(self, records: Sequence[ImageRecord], config: PreprocessConfig, max_pixels: int):
        self.records, self.config, self.max_pixels = records, config, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        return (index, *_crop_or_error(self.records[index], self.config, self.max_pixels))


def _collate(items: list, size: int):
    """In the worker: the batch is stacked there, so DataLoader's pinning thread pins one tensor."""
    return _chunk(items[0][0], [(pixels, error) for _, pixels, error in items], size)


def decode_workers(records: int, workers: int | None) -> int:
    """How many worker processes decode ``records`` images: ``workers`` when given (0: threads in this
    process), else one per usable core for a large job on a host of several cores, and none otherwise."""
    if workers is not None:
        if workers < 0:
            raise ConfigError(f"must be at least 0, got {workers}", option="workers")
        return workers
    cores = _rank_cores()
    return cores if records >= PROCESS_MIN_RECORDS and cores >= PROCESS_MIN_CORES else 0


def _rank_cores() -> int:
    """Usable cores of this process: torchrun's ranks on one host share its cores."""
    return usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def decoded_batches(
    records: Sequence[ImageRecord],
    config: PreprocessConfig,
    batch_size: int,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    pin_memory: bool = False,
) -> Iterator[RawBatch]:
    """Yield the records' crops batch by batch, in order, decoding ahead of the consumer.

    A bad image stops the pass with its error unless ``skip_bad`` (then it is reported in ``report``).
    ``pin_memory``: batches in page-locked memory, for non-blocking copies to a GPU.
    """
    count = decode_workers(len(records), workers)
    chunks = iter(_in_workers(records, config, batch_size, count, max_pixels, pin_memory)) if count else \
        (_chunk(start, results, config.input_size) for start, results in
         _in_threads(records, config, batch_size, max_pixels))
    try:
        for kept, pixels, errors, consumed in chunks:
            _account(errors, skip_bad, report)
            if pin_memory and count == 0:
                pixels = pixels.pin_memory()
            yield RawBatch(kept, pixels, consumed)
    finally:       # workers stop now, not when a traceback holding the iterator is collected
        shutdown = getattr(chunks, "_shutdown_workers", None) or getattr(chunks, "close", None)
        if shutdown is not None:
            shutdown()


def _account(errors: list[tuple[str, str]], skip_bad: bool, report: ReadReport | None) -> None:
    """A batch's bad images: the first stops the pass, unless ``skip_bad`` (then they go to ``report``)."""
    if errors and not skip_bad:
        raise ImageDecodeError(*errors[0])
    if errors and report is not None:
        report.skipped.extend(ImageDecodeError(*error) for error in errors)


def lane_count(records: int, workers: int | None, batch_size: int) -> int:
    """Lanes of a CPU engine pass over ``records`` images in batches of ``batch_size``: one per usable core (no
    more than there are batches: each lane opens its own copy of the engine) where decoding would run in threads
    of this process (:func:`decode_workers` gives none), when that makes two or more; else 0.  ``workers`` given
    (``--workers``, 0 included) keeps the decoding it names beside one engine."""
    lanes = min(_rank_cores(), -(-records // batch_size))
    return lanes if workers is None and lanes >= 2 and decode_workers(records, None) == 0 else 0


def engine_lanes(
    records: Sequence[ImageRecord],
    config: PreprocessConfig,
    batch_size: int,
    engine: Backend,
    lanes: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: ReadReport | None = None,
) -> Iterator[tuple[list[int], np.ndarray | None, int]]:
    """The pass in ``lanes`` threads, each decoding a batch and running it on its own single-threaded copy of
    ``engine`` (:meth:`~edgetl.runtime.engines.backends.Backend.replica`); yields (positions kept, their rows or None,
    records covered) in record order, at most two batches per lane ahead of the consumer.  Bad images as in
    :func:`decoded_batches`, the first in record order."""
    copies: queue.SimpleQueue = queue.SimpleQueue()
    opened: list[Backend] = []

    def run(start: int) -> tuple[list[int], np.ndarray | None, list[tuple[str, str]], int]:
        kept, pixels, errors, consumed = _chunk(start, [_crop_or_error(r, config, max_pixels)
                                                        for r in records[start:start + batch_size]], config.input_size)
        if not kept:
            return kept, None, errors, consumed
        copy = copies.get()
        try:
            return kept, copy.infer(normalize_batch(pixels.numpy(), config)), errors, consumed
        finally:
            copies.put(copy)

    try:
        for _ in range(lanes):
            opened.append(engine.replica(threads=1).open())
            copies.put(opened[-1])
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="edgetl-lane") as pool:
            pending: collections.deque = collections.deque()
            starts = iter(range(0, len(records), batch_size))
            try:
                while True:
                    for start in itertools.islice(starts, 2 * lanes - len(pending)):
                        pending.append(pool.submit(run, start))
                    if not pending:
                        break
                    kept, rows, errors, consumed = pending.popleft().result()
                    _account(errors, skip_bad, report)
                    yield kept, rows, consumed
            finally:            # on an error (or a consumer that stops) the batches not started are dropped
                for future in pending:
                    future.cancel()
    finally:
        for copy in opened:
            copy.close()


def _in_workers(records, config, batch_size, count, max_pixels, pin_memory):
    """torch's DataLoader: ``count`` worker processes (the platform's default start method, as DataLoader
    uses it), two batches ahead each, in order; batches pinned by its own thread when asked."""
    return DataLoader(_Crops(records, config, max_pixels), batch_size=batch_size, shuffle=False, num_workers=count,
                      collate_fn=functools.partial(_collate, size=config.input_size), prefetch_factor=2,
                      pin_memory=pin_memory)


def _in_threads(records, config, batch_size, max_pixels):
    """Threads of this process (Pillow releases the GIL while decoding), a batch ahead: the runtime reader's."""
    for indices, results in prefetched(records, batch_size,
                                       functools.partial(_crop_or_error, config=config, max_pixels=max_pixels)):
        yield indices.start, results
