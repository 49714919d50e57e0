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
from ..bundle.unknown import UNKNOWN_LABEL, auroc
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
    """One input's answer.  ``unknown_score``: how unlike the training data it is (higher: more unknown; None when
    the bundle has no unknown-input scorer); ``unknown``: whether that score is above the threshold.  ``label`` is
    the top class, or ``unknown`` when the caller asked to reject (``reject=True``) and the input is unknown."""

    source: str
    top: list[tuple[str, float]]
    modality: str = "image"
    unknown_score: float | None = None
    unknown: bool | None = None
    rejected: bool = False

    @property
    def label(self) -> str:
        return UNKNOWN_LABEL if self.rejected else self.top[0][0]

    def to_dict(self) -> dict:
        out = {
            self.modality: self.source,
            "label": self.label,
            "score": self.top[0][1],
            "top_k": [{"label": label, "score": score} for label, score in self.top],
        }
        if self.unknown_score is not None:
            out.update(unknown_score=self.unknown_score, unknown=self.unknown)
        return out


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
        self.unknown = state.unknown     # the unknown-input scorer and threshold (None: the bundle has none)
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

    def unknown_scores(self, features: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray | None:
        """How unlike the training data each row of head-input ``features`` is (None: no scorer in the bundle)."""
        if self.unknown is None:
            return None
        return self.unknown.scores(features, self.head.logits(features) if logits is None else logits)

    def _require_unknown(self, what: str) -> None:
        if self.unknown is None:
            raise ConfigError(f"{what} needs an unknown-input threshold, and {self.bundle.path} has none (export it "
                              "with this edgetl, or commit a store version)", option="reject")

    def predict(
        self,
        images: Sequence[str],      # image paths; a text model's texts
        top_k: int = 1,
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        reject: bool = False,
    ) -> list[Prediction]:
        """The top ``top_k`` classes of each input, with its unknown score; ``reject``: an input scored above the
        threshold is labelled ``unknown`` instead of its top class (the classes and scores stay in ``top``)."""
        if top_k < 1:
            raise ConfigError(f"must be at least 1, got {top_k}", option="top_k")
        if reject:
            self._require_unknown("reject")
        k = min(top_k, len(self.labels))
        records = input_records(images, self.preprocess)
        results: dict[int, Prediction] = {}
        for batch in read_batches(records, self.preprocess, batch_size, max_pixels=max_pixels):
            features = apply_adapter(self.features(batch.images), self.adapter)
            logits = self.head.logits(features)
            probabilities = softmax(logits)
            scores = self.unknown_scores(features, logits)
            for position, (index, row) in enumerate(zip(batch.indices, probabilities)):
                order = np.argsort(-row)[:k]
                results[index] = Prediction(records[index].source, [(self.labels[i], float(row[i])) for i in order],
                                            self.preprocess.kind)
                if scores is not None:
                    unknown = bool(scores[position] > self.unknown.threshold)
                    results[index].unknown_score, results[index].unknown = float(scores[position]), unknown
                    results[index].rejected = reject and unknown
        return [results[i] for i in sorted(results)]     # texts run in batches of similar length, not in order

    def evaluate(
        self,
        records: Sequence[ImageRecord],
        batch_size: int = 32,
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: ProgressFactory = silent_progress,
        reject: bool = False,
        unknown_records: Sequence[ImageRecord] | None = None,
    ) -> dict:
        """Accuracy, per-class accuracy and confusion matrix; labels index ``self.labels``.

        ``unknown`` in the report: the scorer's method and threshold and the share of these known inputs it keeps;
        with ``unknown_records`` (inputs of no known class) also ``auroc`` (telling them from the known inputs by
        score) and ``accepted`` (the share of them the threshold lets through).  ``reject``: an input scored above
        the threshold counts as answered ``unknown`` (wrong, for a known input): ``accuracy`` falls by the known
        inputs rejected, and ``rejected`` is their share; without it the labels are the head's, untouched."""
        if not records:
            raise ConfigError(f"no {'texts' if self.preprocess.kind == 'text' else 'images'} to evaluate")
        if reject or unknown_records is not None:
            self._require_unknown("--reject" if reject else "--unknown")
        found = backbone_features(self, records, self.adapter, batch_size, skip_bad, max_pixels, progress,
                                  label="evaluating")
        logits = self.head.logits(found.values) if found.kept else np.zeros((0, len(self.labels)), np.float32)
        predicted = np.argmax(logits, axis=1) if found.kept else np.zeros(0, np.int64)
        scores = self.unknown_scores(found.values, logits)
        truth = np.array([records[i].label for i in found.kept], dtype=np.int64)
        result = classification_report(truth, predicted, self.labels)
        if scores is not None:
            settings = self.unknown.settings
            above = scores > self.unknown.threshold
            block = {"method": settings.method, "threshold": self.unknown.threshold, "keep": settings.keep,
                     "kept": float(np.mean(~above)) if len(above) else None}
            if unknown_records is not None:
                if not unknown_records:
                    raise ConfigError("no inputs in the unknown data", option="unknown")
                other = backbone_features(self, unknown_records, self.adapter, batch_size, skip_bad, max_pixels,
                                          progress, label="unknown inputs")
                if not other.kept or not len(scores):
                    raise ConfigError("AUROC needs known and unknown inputs that could be read", option="unknown")
                theirs = self.unknown_scores(other.values)
                block.update(auroc=auroc(scores, theirs), accepted=float(np.mean(theirs <= self.unknown.threshold)),
                             n_unknown=len(theirs))
                result["skipped"] = other.skipped
            result["unknown"] = block
            if reject:
                result["accuracy_without_reject"] = result["accuracy"]
                result["accuracy"] = float(np.mean((truth == predicted) & ~above)) if len(truth) else float("nan")
                result["rejected"] = float(np.mean(above)) if len(above) else 0.0
        result["skipped"] = found.skipped + result.get("skipped", [])
        result["artifact"] = self.artifact.name
        result["backend"] = self.backend.name
        result["head_version"] = self.head_version
        result["artifact_choice"] = self.choice_reason
        result["precision"] = self.backend.effective_precision
        return result
