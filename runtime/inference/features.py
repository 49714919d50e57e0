"""Backbone features of labelled or unlabelled images: the one loop of reading, batching, running the backbone and
adapting that evaluate, update, adapt and cluster share (and the feature adapter it applies)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..data.decoding import DecodeLane
from ..data.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig
from ..data.reader import ReadReport, read_batches
from ..data.sources import ImageRecord
from ..progress import ProgressFactory, silent_progress


class FeatureSource(Protocol):
    """What computes backbone features: a :class:`~edgetl.runtime.engines.runner.BackboneRunner` (or an
    ``EdgeModel``)."""

    preprocess: PreprocessConfig
    feature_dim: int

    def features(self, batch: np.ndarray) -> np.ndarray: ...


def apply_adapter(features: np.ndarray, adapter: dict[str, np.ndarray] | None) -> np.ndarray:
    """Map target-domain features onto the source statistics the head was trained on (``edgetl-rt adapt``).

    Two forms: per feature (``scale``, a vector: each feature's spread) and full covariance (``matrix``, d x d:
    the target's covariance whitened and re-coloured with the source's, as CORAL does); both centre on the
    target's mean and move onto the source's."""
    if adapter is None:
        return features
    centred = features - adapter["target_mean"]
    mapped = centred @ adapter["matrix"] if "matrix" in adapter else centred * adapter["scale"]
    return (mapped + adapter["source_mean"]).astype(np.float32)


@dataclass
class Features:
    """Features of the images that could be read (``kept`` indexes the records), and what was skipped."""

    values: np.ndarray
    kept: list[int]
    report: ReadReport = field(default_factory=ReadReport)

    @property
    def skipped(self) -> list[str]:
        return [f"{e.source}: {e.reason}" for e in self.report.skipped]


def backbone_features(source: FeatureSource, records: Sequence[ImageRecord], adapter=None, batch_size: int = 16,
                      skip_bad: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                      progress: ProgressFactory = silent_progress, label: str = "backbone",
                      lane: DecodeLane | None = None) -> Features:
    """Features of ``records`` in the head's input space (``adapter`` applied), in record order (decoded in
    ``lane``'s bounded pool when given: a service's)."""
    chunks, kept, report = [], [], ReadReport()
    bar = progress(label, len(records))
    try:
        for batch in read_batches(records, source.preprocess, batch_size, max_pixels=max_pixels, skip_bad=skip_bad,
                                  report=report, lane=lane):
            if batch.indices:
                chunks.append(apply_adapter(source.features(batch.images), adapter))
                kept.extend(batch.indices)
            bar.update(batch.consumed)
    finally:
        bar.close()
    values = np.concatenate(chunks) if chunks else np.zeros((0, source.feature_dim), np.float32)
    order = np.argsort(kept, kind="stable")        # texts come in batches of similar length: back to record order
    return Features(values[order], [kept[i] for i in order], report)
