"""Calibration and validation tensors for quantization and the accuracy gate.

Calibration uses a seeded sample of the run's *training* images (never the
validation split the gate measures on).  Both sets are decoded once with the
runtime's preprocessing and kept in temporary memory-mapped files, so every
format and every fallback attempt reads the same tensors.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.runtime.data.preprocess import PreprocessConfig
from edgetl.runtime.data.reader import read_batches
from edgetl.runtime.data.text import TextPreprocess
from edgetl.runtime.progress import ProgressFactory, silent_progress

DEFAULT_CALIBRATION_SIZE = 300


def calibration_sample(records: list, size: int, seed: int = 0) -> list:
    """A seeded sample of ``size`` records (all of them when there are fewer)."""
    if size >= len(records):
        return list(records)
    order = np.random.default_rng(seed).permutation(len(records))[:size]
    return [records[i] for i in sorted(order)]


def decode_to_memmap(records: list, preprocess: PreprocessConfig | TextPreprocess, folder: Path, name: str,
                     progress: ProgressFactory = silent_progress) -> np.ndarray:
    """The network's inputs for ``records`` in a memory-mapped file: images (N, 3, S, S) float32, or token ids
    (N, L) int64 padded to the longest text of the set (run them in batches by length, cut to their longest, as
    the device does: :func:`~edgetl.exporters.compare.run_in_batches`)."""
    if isinstance(preprocess, TextPreprocess):
        tokens = preprocess.tokens([r.text for r in records])
        array = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.int64,
                                          shape=(len(records), max((len(t) for t in tokens), default=1)))
        array[:] = preprocess.pad(tokens, array.shape[1])
        return array
    size = preprocess.input_size
    array = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32,
                                      shape=(len(records), 3, size, size))
    bar = progress(f"decoding {name} images", len(records))
    try:
        for batch in read_batches(records, preprocess, 32):
            array[batch.indices] = batch.images
            bar.update(batch.consumed)
    finally:
        bar.close()
    return array


def calibration_items(array: np.ndarray, preprocess) -> list[np.ndarray]:
    """One-row batches of ``array`` for a quantizer's statistics; a text's row trimmed of its padding, which a
    batch of one never carries on the device (padded positions would widen the activation ranges)."""
    if isinstance(preprocess, TextPreprocess):
        return preprocess.unpadded(array)
    return [array[i:i + 1] for i in range(len(array))]


@dataclass
class ExportData:
    """Decoded calibration images and labelled validation images, shared by all formats."""

    preprocess: PreprocessConfig | TextPreprocess
    train_records: list          # ImageRecord or TextRecord
    val_records: list
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    progress: ProgressFactory = silent_progress
    _folder: tempfile.TemporaryDirectory = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="edgetl-export-"))
    _cache: dict = field(default_factory=dict)

    @property
    def scratch(self) -> Path:
        """Temporary folder for intermediate files; removed by :meth:`close`."""
        return Path(self._folder.name)

    def calibration(self, size: int | None = None) -> np.ndarray:
        size = size or self.calibration_size
        key = f"calib-{size}"
        if key not in self._cache:
            sample = calibration_sample(self.train_records, size)
            self._cache[key] = decode_to_memmap(sample, self.preprocess, self.scratch, key, self.progress)
        return self._cache[key]

    def train_check(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Labelled training images for accuracy-aware quantization, so the val split stays unseen."""
        key = f"train-check-{size}"
        sample = calibration_sample(self.train_records, size, seed=1)
        if key not in self._cache:
            self._cache[key] = decode_to_memmap(sample, self.preprocess, self.scratch, key, self.progress)
        return self._cache[key], np.array([r.label for r in sample], dtype=np.int64)

    @property
    def val_images(self) -> np.ndarray:
        if "val" not in self._cache:
            self._cache["val"] = decode_to_memmap(self.val_records, self.preprocess, self.scratch, "val", self.progress)
        return self._cache["val"]

    @property
    def val_labels(self) -> np.ndarray:
        return np.array([r.label for r in self.val_records], dtype=np.int64)

    def close(self) -> None:
        self._cache.clear()
        self._folder.cleanup()
