"""A bundle ready to classify: its backbone on the chosen backend (:mod:`edgetl.runtime.engines.runner`) and the numpy
head beside it.

:class:`EdgeModel` is the device-side API behind ``edgetl-rt predict`` and ``evaluate`` (and ``serve``).  The
bundle is opened once (:class:`~edgetl.runtime.bundle.folder.Bundle`): the manifest read, and the sha256 of every file
it loads checked once (the chosen artifact and the head; the feature store checks its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle.folder import Bundle
from ..bundle.heads import softmax
from ..compat import renamed_keyword
from ..data.preprocess import DEFAULT_MAX_PIXELS
from ..data.reader import read_batches
from ..data.sources import ImageRecord, input_records
from ..engines.runner import BackboneRunner
from ..errors import ConfigError
from ..metrics import classification_report
from ..progress import ProgressFactory, silent_progress
from .features import apply_adapter, backbone_features


@dataclass
class Prediction:
    source: str
    top: list[tuple[str, float]]
    modality: str = "image"

    def to_dict(self) -> dict:
        return {
            self.modality: self.source,
            "label": self.top[0][0],
            "score": self.top[0][1],
            "top_k": [{"label": label, "score": score} for label, score in self.top],
        }


class EdgeModel:
    """Backbone artifact + head of a verified bundle.

    The head is the feature store's current version when the device has learned (``edgetl-rt update``;
    ``use_store=False`` ignores it), else the bundle's own.  ``images``, ``measure`` and ``log``: see
    :class:`~edgetl.runtime.engines.runner.BackboneRunner`.  ``bundle`` is a folder or an opened :class:`Bundle`.
    """

    @renamed_keyword("tune", "measure")
    def __init__(
        self,
        bundle: str | Path | Bundle,
        artifact: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        use_store: bool = True,
        images: int | None = None,
        measure: bool = True,
        log=lambda message: None,
    ):
        self.bundle = Bundle.open(bundle, verify=verify)
        self.manifest = self.bundle.manifest
        state = self.bundle.current_head(use_store)
        self.head, self.labels, self.adapter, self.head_version = state.head, state.labels, state.adapter, state.version
        self.backbone = BackboneRunner(self.bundle, artifact, backend, threads, images, measure, log)
        self.preprocess, self.feature_dim = self.backbone.preprocess, self.backbone.feature_dim
        self.artifact, self.choice_reason = self.backbone.artifact, self.backbone.choice_reason
        self.measured = self.backbone.measured      # what was measured here before choosing, if anything
        self.backend = self.backbone.backend

    @property
    def tuning(self):
        """0.6's name of :attr:`measured` (goes in 0.8)."""
        from ..compat import deprecated_use

        deprecated_use("EdgeModel.tuning", "EdgeModel.measured")
        return self.measured

    def close(self) -> None:
        self.backbone.close()

    def __enter__(self) -> EdgeModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.backbone.features(batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.head.logits(apply_adapter(self.features(batch), self.adapter))

    def predict(
        self,
        images: Sequence[str],      # image paths; a text model's texts
        top_k: int = 1,
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Prediction]:
        if top_k < 1:
            raise ConfigError(f"must be at least 1, got {top_k}", option="top_k")
        k = min(top_k, len(self.labels))
        records = input_records(images, self.preprocess)
        results: dict[int, Prediction] = {}
        for batch in read_batches(records, self.preprocess, batch_size, max_pixels=max_pixels):
            probabilities = softmax(self.logits(batch.images))
            for index, row in zip(batch.indices, probabilities):
                order = np.argsort(-row)[:k]
                results[index] = Prediction(records[index].source, [(self.labels[i], float(row[i])) for i in order],
                                            self.preprocess.kind)
        return [results[i] for i in sorted(results)]     # texts run in batches of similar length, not in order

    def evaluate(
        self,
        records: Sequence[ImageRecord],
        batch_size: int = 32,
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: ProgressFactory = silent_progress,
    ) -> dict:
        """Accuracy, per-class accuracy and confusion matrix; labels index ``self.labels``."""
        if not records:
            raise ConfigError(f"no {'texts' if self.preprocess.kind == 'text' else 'images'} to evaluate")
        found = backbone_features(self, records, self.adapter, batch_size, skip_bad, max_pixels, progress,
                                  label="evaluating")
        predicted = np.argmax(self.head.logits(found.values), axis=1) if found.kept else np.zeros(0, np.int64)
        result = classification_report(np.array([records[i].label for i in found.kept]), predicted, self.labels)
        result["skipped"] = found.skipped
        result["artifact"] = self.artifact.name
        result["backend"] = self.backend.name
        result["head_version"] = self.head_version
        result["artifact_choice"] = self.choice_reason
        result["precision"] = self.backend.effective_precision
        return result
