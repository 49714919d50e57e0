"""Batched, prefetched image decoding for feature extraction and evaluation.

Decoding runs in a small thread pool (Pillow releases the GIL while it
decodes and resizes) so the next batch is ready when the model finishes the
current one, or, for a service, in its bounded decode pool
(:class:`~edgetl.runtime.data.decoding.DecodeLane`).  Bad images either stop
the run with an error that names the file, or, with ``skip_bad``, are left
out and reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError, ImageDecodeError
from .decoding import DecodeLane
from .preprocess import DEFAULT_MAX_PIXELS, ImageSource, PreprocessConfig, preprocess
from .sources import ImageRecord
from .text import TextPreprocess, length_sorted


@dataclass
class Batch:
    """Preprocessed images, the positions of their records, and how many records were read."""

    indices: list[int]
    images: np.ndarray
    consumed: int


@dataclass
class ReadReport:
    """What was skipped while reading (only with ``skip_bad``)."""

    skipped: list[ImageDecodeError] = field(default_factory=list)


def decode_or_error(record: ImageRecord, decode: Callable[[ImageSource], np.ndarray]) -> np.ndarray | ImageDecodeError:
    """``decode(record.image)``, or the error that names the record (an in-memory image by its record, not by the
    buffer), returned rather than raised so a batch can skip it."""
    try:
        return decode(record.image)
    except ImageDecodeError as exc:
        if record.pixels is None and record.encoded is None:
            return exc
        return ImageDecodeError(record.source, exc.reason)


def prefetched(records: Sequence[ImageRecord], batch_size: int, decode_one: Callable[[ImageRecord], object],
               workers: int | None = None, lane: DecodeLane | None = None) -> Iterator[tuple[range, list]]:
    """``decode_one`` of every record in a thread pool (``lane``'s when given), one batch ahead: (positions,
    results) batch by batch."""
    if lane is not None:
        yield from _ahead(records, batch_size, decode_one, lane.submit, lane.result)
        return
    if len(records) <= 1:      # nothing to overlap: a pool would only add a thread's start-up (milliseconds)
        if records:
            yield range(0, 1), [decode_one(records[0])]
        return
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from _ahead(records, batch_size, decode_one, pool.submit, lambda future: future.result())


def _ahead(records: Sequence[ImageRecord], batch_size: int, decode_one: Callable[[ImageRecord], object],
           submit: Callable, result: Callable) -> Iterator[tuple[range, list]]:
    chunks = [range(start, min(start + batch_size, len(records))) for start in range(0, len(records), batch_size)]
    pending, submitted = None, []
    try:
        for position in range(len(chunks) + 1):
            upcoming = None
            if position < len(chunks):
                upcoming = (chunks[position], [submit(decode_one, records[i]) for i in chunks[position]])
                submitted.extend(upcoming[1])
            if pending is not None:
                yield pending[0], [result(future) for future in pending[1]]
            pending = upcoming
    finally:                   # stopped early (an error, a bad image): what has not started never does
        for future in submitted:
            future.cancel()


def read_batches(
    records: Sequence[ImageRecord],
    config: PreprocessConfig | TextPreprocess,
    batch_size: int = 32,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    workers: int | None = None,
    lane: DecodeLane | None = None,
) -> Iterator[Batch]:
    """Yield preprocessed batches in order; raise on the first bad image unless ``skip_bad``.

    ``lane``: decode in a service's bounded pool, each image holding its pixels from the pool's budget (else a
    pool of ``workers`` threads of this call's own, or this thread for one image).

    Texts (:class:`~edgetl.runtime.data.text.TextPreprocess`) are tokenized at once (``tokenizers`` runs them on all
    cores itself) and batched by length, each batch padded to its longest, so batches come out of record order:
    ``indices`` say whose rows they are."""
    mismatched = next((r for r in records if r.modality != config.kind), None)
    if mismatched is not None:
        raise DataError(f"{mismatched.source} is {'a text' if mismatched.modality == 'text' else 'an image'}, "
                        f"but the model reads {config.kind}s")
    if isinstance(config, TextPreprocess):
        tokens = config.tokens([r.text for r in records])
        for rows in length_sorted(tokens, batch_size):
            yield Batch([int(i) for i in rows], config.pad([tokens[i] for i in rows]), len(rows))
        return

    hold = None if lane is None else lane.hold

    def one(record: ImageRecord):
        return decode_or_error(record, lambda image: preprocess(image, config, max_pixels=max_pixels, hold=hold))

    for indices, results in prefetched(records, batch_size, one, workers, lane):
        yield _collect(indices, results, skip_bad=skip_bad, report=report)


def _collect(indices: range, results: list, skip_bad: bool, report: ReadReport | None) -> Batch:
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    for index, result in zip(indices, results):
        if isinstance(result, ImageDecodeError):
            if not skip_bad:
                raise result
            if report is not None:
                report.skipped.append(result)
            continue
        kept.append(index)
        arrays.append(result)
    images = np.stack(arrays) if arrays else np.zeros((0,), dtype=np.float32)
    return Batch(kept, images, len(indices))
