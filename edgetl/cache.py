"""On-disk cache of frozen-backbone outputs, memory-mapped on read.

An entry is keyed by everything that determines its content: the backbone
and a digest of its weights, the freeze point, the preprocessing, the
extraction precision and the content of every input image, in order.  A
second fine-tune on the same data with other head settings therefore does no
backbone pass at all.  Which engine computed an entry (eager torch, or OpenVINO /
ONNX Runtime on the exported frozen part) is not part of the key: an engine is
used only after matching torch within 1e-4 (see :mod:`edgetl.engines`).  Entries are written to a temporary folder and
renamed into place, so a killed extraction never leaves a partial entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.runtime.data.preprocess import CROP_ARITHMETIC
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.errors import EdgetlError
from edgetl.runtime.fsutil import atomic_directory

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("EDGETL_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgetl" / "features"


@dataclass
class CachedFeatures:
    """Outputs of the frozen part for every record (rows of skipped images are zero)."""

    key: str
    features: np.ndarray   # (N, ...) float32, memory-mapped when read from disk
    valid: np.ndarray      # (N,) bool: False where the image was skipped as bad
    skipped: list[str]
    hit: bool


def cache_key(
    backbone: str,
    weights_sha256: str,
    freeze_stage: int,
    preprocess: dict,
    precision: str,
    records: Sequence[ImageRecord],
    skip_bad: bool,
) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        **({"crop_arithmetic": CROP_ARITHMETIC} if preprocess.get("kind", "image") == "image" else {}),
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "freeze_stage": freeze_stage,
        "preprocess": preprocess,
        "precision": precision,
        "skip_bad": skip_bad,
        "count": len(records),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for record in records:
        digest.update(record.content_digest())
    return digest.hexdigest()


class FeatureCache:
    """A folder of cache entries, one subfolder per key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> CachedFeatures | None:
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
            valid = np.load(folder / "valid.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if meta.get("format") != CACHE_FORMAT or len(valid) != len(features):
            return None
        return CachedFeatures(key, features, valid, list(meta.get("skipped", [])), hit=True)

    @contextlib.contextmanager
    def writer(self, key: str, count: int, shape: tuple[int, ...]) -> Iterator[CacheWriter]:
        """An entry of ``count`` rows of ``shape``, written as rows arrive; it appears (complete, synced) when
        the block ends, and not at all when it raises."""
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_directory(self.path(key), overwrite=True) as staging:
            writer = CacheWriter(staging, count, tuple(shape))
            try:
                yield writer
            finally:
                writer.close()
            writer.finish()

    @contextlib.contextmanager
    def shared_writer(self, key: str, count: int, shape: tuple[int, ...], ranks) -> Iterator[CacheWriter]:
        """:meth:`writer` for every rank of a process group (:class:`edgetl.distributed.Ranks`; None: this process
        alone).  Rank 0 creates the entry and tells the others where; each writes its own rows; rank 0 gathers
        their valid rows and bad-image lists, completes the entry and renames it, and every rank leaves the block
        once it is in place."""
        if ranks is None:
            with self.writer(key, count, shape) as writer:
                yield writer
            return
        if ranks.main:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_directory(self.path(key), overwrite=True) as staging:
                writer = CacheWriter(staging, count, tuple(shape))
                ranks.broadcast(str(staging))
                with _group_outcome(ranks, writer) as parts:
                    yield writer
                writer.merge(parts)
                writer.finish()
            ranks.barrier()                        # the entry is in place
            return
        writer = CacheWriter.attach(Path(ranks.broadcast(None)), count, tuple(shape))
        with _group_outcome(ranks, writer):
            yield writer
        ranks.barrier()

    def loaded(self, key: str) -> CachedFeatures:
        """The entry just written, read back (memory-mapped)."""
        entry = self.load(key)
        if entry is None:
            raise OSError(f"feature cache entry {self.path(key)} could not be read back after writing")
        entry.hit = False
        return entry

    def store(self, key: str, features: np.ndarray, valid: np.ndarray, skipped: list[str]) -> CachedFeatures:
        """An entry from rows already in memory."""
        with self.writer(key, len(features), features.shape[1:]) as writer:
            writer.write(range(len(features)), features)
            writer.valid[:] = valid
            writer.skipped = list(skipped)
        return self.loaded(key)


@contextlib.contextmanager
def _group_outcome(ranks, writer: CacheWriter) -> Iterator[list]:
    """Around one rank's share of a pass: every rank learns every other's outcome (its rows and bad images, or its
    error), so a rank that fails makes all of them fail, and none waits for it forever."""
    parts: list = []
    failure: BaseException | None = None
    try:
        yield parts
    except BaseException as exc:           # noqa: BLE001 - told to every rank, then raised again
        failure = exc
    finally:
        writer.close()
    outcome = ("failed", f"{type(failure).__name__}: {failure}") if failure is not None else \
        ("ok", np.flatnonzero(writer.valid).tolist(), writer.skipped)
    gathered = ranks.gather(outcome)
    if failure is not None:
        raise failure
    failed = [(rank, o[1]) for rank, o in enumerate(gathered) if o[0] == "failed"]
    if failed:
        raise EdgetlError(f"rank {failed[0][0]} of the backbone pass failed: {failed[0][1]}")
    parts.extend((rows, skipped) for _, rows, skipped in gathered)


class CacheWriter:
    """Rows go straight to the entry's ``features.npy`` at their offsets (``os.pwrite``), so no array of every
    row is ever held in memory: a pass over a million images uses the memory of one batch.  Rows never written
    (images skipped as bad) read as zeros."""

    def __init__(self, folder: Path, count: int, shape: tuple[int, ...], create: bool = True):
        self.folder, self.count, self.shape = folder, count, shape
        self.valid = np.zeros(count, dtype=bool)
        self.skipped: list[str] = []
        self.row_bytes = int(np.prod(shape, dtype=np.int64)) * 4
        if create:
            self._file = open(folder / "features.npy", "wb")
            np.lib.format.write_array_header_1_0(self._file, {"descr": "<f4", "fortran_order": False,
                                                              "shape": (count, *shape)})
            self._file.flush()
            self._data_start = self._file.tell()
            self._file.truncate(self._data_start + count * self.row_bytes)   # sparse: unwritten rows are zeros
        else:
            self._file = open(folder / "features.npy", "r+b")
            np.lib.format.read_magic(self._file)
            header_shape, _, _ = np.lib.format.read_array_header_1_0(self._file)
            if header_shape != (count, *shape):
                raise OSError(f"{folder} holds rows of shape {header_shape}, not {(count, *shape)}")
            self._data_start = self._file.tell()

    @classmethod
    def attach(cls, folder: Path, count: int, shape: tuple[int, ...]) -> CacheWriter:
        """Another process's entry in the making, to write this process's rows into."""
        return cls(folder, count, shape, create=False)

    def merge(self, parts: list[tuple[list[int], list[str]]]) -> None:
        """Every rank's (valid rows, skipped images), in rank order (blocks in record order)."""
        self.skipped = []
        for rows, skipped in parts:
            self.valid[rows] = True
            self.skipped.extend(skipped)

    def write(self, indices: Sequence[int], rows: np.ndarray) -> None:
        """``rows[i]`` is the output of record ``indices[i]``; each run of consecutive indices is one write."""
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if rows.shape[1:] != self.shape or len(rows) != len(indices):
            raise ValueError(f"rows of shape {rows.shape} for {len(indices)} records; expected (n, {self.shape})")
        indices = list(indices)
        start = 0
        for end in range(1, len(indices) + 1):
            if end == len(indices) or indices[end] != indices[end - 1] + 1:
                self._write_at(memoryview(rows[start:end]).cast("B"),
                               self._data_start + indices[start] * self.row_bytes)
                start = end
        self.valid[indices] = True

    def _write_at(self, data: memoryview, offset: int) -> None:
        """Every byte of ``data`` at ``offset`` (one pwrite writes at most about 2 GiB on Linux)."""
        while len(data):
            written = os.pwrite(self._file.fileno(), data, offset)
            data, offset = data[written:], offset + written

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def finish(self) -> None:
        np.save(self.folder / "valid.npy", self.valid)
        (self.folder / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, "shape": [self.count, *self.shape],
                                                           "skipped": self.skipped}))
