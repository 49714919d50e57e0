"""A loaded bundle: backbone on a runtime backend, numpy head beside it.

:class:`EdgeModel` is the device-side API behind ``edgetl-rt predict``,
``evaluate`` and ``bench``.  Loading verifies the sha256 of every file it
reads (the manifest's entries for the chosen artifact and the head; the
feature store checks its own); ``edgetl-rt unpack`` and ``pack`` verify the
whole bundle.  Which artifact runs is :mod:`.choice`'s decision; with nothing
measured on this machine yet, the candidates are measured first (:mod:`.tune`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .choice import choose, deployment_backends, imported_engines
from .data import ImageRecord
from .errors import BundleError, ConfigError
from .heads import Head, load_head, softmax
from .machine import cpu_facts, this_cpu_class
from .manifest import BundleManifest, read_bundle_manifest, verify_artifact, verify_file
from .metrics import classification_report
from .preprocess import DEFAULT_MAX_PIXELS
from .progress import ProgressFactory, silent_progress
from .reader import ReadReport, read_batches
from .store import FeatureStore, apply_adapter
from .timings import read_timings
from .tune import artifact_backend, tune_bundle


@dataclass
class Prediction:
    source: str
    top: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return {
            "image": self.source,
            "label": self.top[0][0],
            "score": self.top[0][1],
            "top_k": [{"label": label, "score": score} for label, score in self.top],
        }


def bundle_head(bundle: Path, manifest: BundleManifest) -> Head:
    """The head the bundle was exported with, checked against the manifest's classes and feature size."""
    head = load_head(Path(bundle) / manifest.head["file"])
    if head.num_classes != len(manifest.labels) or head.feature_dim != manifest.feature_dim:
        raise BundleError(
            f"head {manifest.head['file']} has shape ({head.num_classes} classes, {head.feature_dim} features) "
            f"but the manifest says ({len(manifest.labels)}, {manifest.feature_dim})"
        )
    return head


class EdgeModel:
    """Backbone artifact + head of a verified bundle.

    The head is the feature store's current version when the device has learned (``edgetl-rt update``;
    ``use_store=False`` ignores it), else the bundle's own.  ``images`` says how many inputs the caller
    will run (a one-shot command), so the choice weighs time to those results; None means a long run.
    ``tune=False`` never measures: with nothing recorded here, the profile or CPU-class order decides.
    ``log`` receives a line when the candidates are measured.
    """

    def __init__(
        self,
        bundle: str | Path,
        artifact: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        use_store: bool = True,
        images: int | None = None,
        tune: bool = True,
        log=lambda message: None,
    ):
        imported = imported_engines()    # before measuring, which imports them all
        self.bundle = Path(bundle)
        if self.bundle.is_file() and self.bundle.name.endswith((".tar.gz", ".tgz")):
            raise BundleError(f"{bundle} is a packed bundle; unpack it first: edgetl-rt unpack {bundle} DEST")
        self.manifest = read_bundle_manifest(self.bundle, verify=False)
        if verify:
            verify_file(self.bundle, self.manifest.head["file"], self.manifest.head["sha256"])
        store = FeatureStore(self.bundle)
        self.head_version: int | None = None
        self.adapter: dict | None = None
        if use_store and store.exists:   # the head learned on the device (edgetl-rt update), as last committed
            version = store.version()
            self.head, self.labels, self.adapter = store.head(version), list(version.classes), store.adapter(version)
            self.head_version = version.version
            if self.head.num_classes != len(self.labels) or self.head.feature_dim != self.manifest.feature_dim:
                raise BundleError(f"store version {version.version} has a head of the wrong shape; roll back")
        else:
            self.head, self.labels = bundle_head(self.bundle, self.manifest), list(self.manifest.labels)
        self.preprocess = self.manifest.preprocess_config
        device = self.manifest.openvino_device
        timings = read_timings(self.bundle) if artifact is None else None
        self.tuning = None
        if artifact is None and tune:
            self.tuning = tune_bundle(self.bundle, self.manifest, backend, threads, device, timings, log)
            if self.tuning is not None:
                timings = read_timings(self.bundle)
        choice = choose(self.manifest, artifact, backend, timings, this_cpu_class(), cpu_facts()["flags"], images,
                        imported)
        self.artifact, self.choice_reason, backend = choice.artifact, choice.reason, choice.backend
        if backend is None:
            runnable = deployment_backends(self.artifact)
            if not runnable:
                raise BundleError(
                    f"artifact {self.artifact.name} needs one of {', '.join(self.artifact.backends)}, "
                    "none of which is installed here"
                )
            backend = runnable[0]
        if verify:
            verify_artifact(self.bundle, self.artifact)
        self.backend = artifact_backend(self.bundle, self.artifact, backend, threads, device).open()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "EdgeModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.head.logits(apply_adapter(self.features(batch), self.adapter))

    def predict(
        self,
        images: Sequence[str],
        top_k: int = 1,
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Prediction]:
        if top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {top_k}")
        k = min(top_k, len(self.labels))
        records = [ImageRecord(str(path), -1) for path in images]
        results: list[Prediction] = []
        for batch in read_batches(records, self.preprocess, batch_size, max_pixels=max_pixels):
            probabilities = softmax(self.logits(batch.images))
            for index, row in zip(batch.indices, probabilities):
                order = np.argsort(-row)[:k]
                results.append(Prediction(records[index].source, [(self.labels[i], float(row[i])) for i in order]))
        return results

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
            raise ConfigError("no images to evaluate")
        report = ReadReport()
        truth: list[int] = []
        predicted: list[int] = []
        bar = progress("evaluating", len(records))
        try:
            for batch in read_batches(records, self.preprocess, batch_size, max_pixels=max_pixels,
                                      skip_bad=skip_bad, report=report):
                if batch.indices:
                    predicted.extend(np.argmax(self.logits(batch.images), axis=1).tolist())
                    truth.extend(records[i].label for i in batch.indices)
                bar.update(batch.consumed)
        finally:
            bar.close()
        result = classification_report(np.array(truth), np.array(predicted), self.labels)
        result["skipped"] = [f"{e.source}: {e.reason}" for e in report.skipped]
        result["artifact"] = self.artifact.name
        result["backend"] = self.backend.name
        result["head_version"] = self.head_version
        result["artifact_choice"] = self.choice_reason
        result["precision"] = self.backend.effective_precision
        return result
