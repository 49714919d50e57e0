"""A loaded bundle: backbone on a runtime backend, numpy head beside it.

:class:`EdgeModel` is the device-side API behind ``edgetl-rt predict``,
``evaluate`` and ``bench``.  Loading verifies every file's sha256 first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import available_backends, create_backend, installed
from .data import ImageRecord
from .errors import BundleError, ConfigError
from .heads import Head, load_head, softmax
from .manifest import Artifact, BundleManifest, read_bundle_manifest
from .metrics import classification_report
from .preprocess import DEFAULT_MAX_PIXELS
from .progress import ProgressFactory, silent_progress
from .reader import ReadReport, read_batches
from .store import FeatureStore, apply_adapter
from .timings import recorded_timings


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


#: Default order on a CPU host: fastest first, among artifacts that passed the accuracy gate.
#: TensorRT-flavoured and fp16 files run on CPU backends only as a fallback (they are slower there).
CPU_PREFERENCE = ("openvino-int8", "onnx-int8", "openvino", "onnx", "onnx-int8-dynamic", "onnx-fp16",
                  "onnx-int8-trt")


def runnable_backends(artifact: Artifact) -> list[str]:
    """The artifact's backends (in its order of preference) that are installed here."""
    return installed(artifact.backends or [artifact.backend])


@dataclass
class Choice:
    artifact: Artifact
    backend: str | None        # None: the artifact's first installed backend
    reason: str


def choose_artifact(manifest: BundleManifest, artifact: str | None, backend: str | None,
                    timings: dict[tuple[str, str], float] | None = None) -> Artifact:
    """The named artifact, or the fastest deployable backbone artifact this machine can run."""
    return choose(manifest, artifact, backend, timings).artifact


def choose(manifest: BundleManifest, artifact: str | None, backend: str | None,
           timings: dict[tuple[str, str], float] | None = None) -> Choice:
    """Which artifact (and backend) to run, and why: named; else the fastest recorded on this machine
    (``edgetl-rt bench --record``); else the bundle's device profile; else a fixed CPU order."""
    if artifact is not None:
        chosen = manifest.artifact(artifact)
        if chosen.role != "backbone":
            raise ConfigError(f"artifact '{artifact}' is a {chosen.role} model; pick a backbone artifact")
        return Choice(chosen, backend, "named")
    candidates = [
        a for a in manifest.artifacts
        if a.role == "backbone" and a.deployable and runnable_backends(a)
        and (backend is None or backend in runnable_backends(a))
    ]
    if not candidates:
        raise BundleError(
            "bundle has no backbone artifact this machine can run"
            + (f" with backend {backend}" if backend else "")
            + f" (artifacts: {', '.join(f'{a.name}/{a.backend}' for a in manifest.artifacts)}; "
            f"installed backends: {', '.join(available_backends()) or 'none'})"
        )
    measured = [(p50, a, b) for a in candidates for b in runnable_backends(a)
                if (a.name, b) in (timings or {}) and (backend is None or b == backend)
                for p50 in [timings[(a.name, b)]]]
    if measured:
        p50, fastest, on = min(measured, key=lambda m: m[0])
        return Choice(fastest, on, f"fastest batch-1 p50 recorded on this machine ({p50:.3g} ms)")
    if manifest.target:
        return Choice(min(candidates, key=lambda a: target_rank(manifest.target, a)), backend,
                      f"device profile {manifest.target.get('name')}")
    rank = {name: i for i, name in enumerate(CPU_PREFERENCE)}
    return Choice(min(candidates, key=lambda a: rank.get(a.format, len(rank))), backend, "default CPU order")


def target_rank(target: dict, artifact: Artifact) -> tuple[bool, int, int]:
    """Sort key from the bundle's device profile: artifacts that run on their intended backend here first,
    then the profile's backend order, then its precision order."""
    runnable = runnable_backends(artifact)
    intended = (artifact.backends or [artifact.backend])[0]
    used = runnable[0].removesuffix("-reference")
    backends, precisions = target.get("backends", []), target.get("precisions", [])
    return (intended not in runnable,
            backends.index(used) if used in backends else len(backends),
            precisions.index(artifact.precision) if artifact.precision in precisions else len(precisions))


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
    ``use_store=False`` ignores it), else the bundle's own.
    """

    def __init__(
        self,
        bundle: str | Path,
        artifact: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        use_store: bool = True,
    ):
        self.bundle = Path(bundle)
        if self.bundle.is_file() and self.bundle.name.endswith((".tar.gz", ".tgz")):
            raise BundleError(f"{bundle} is a packed bundle; unpack it first: edgetl-rt unpack {bundle} DEST")
        self.manifest = read_bundle_manifest(self.bundle, verify=verify)
        choice = choose(self.manifest, artifact, backend, recorded_timings(self.bundle))
        self.artifact, self.choice_reason, backend = choice.artifact, choice.reason, choice.backend
        self.preprocess = self.manifest.preprocess_config
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
        if backend is None:
            runnable = runnable_backends(self.artifact)
            if not runnable:
                raise BundleError(
                    f"artifact {self.artifact.name} needs one of {', '.join(self.artifact.backends)}, "
                    "none of which is installed here"
                )
            backend = runnable[0]
        device = self.manifest.target.get("profile", {}).get("hardware", {}).get("openvino_device")
        self.backend = create_backend(backend, self.bundle / self.artifact.file, threads, device=device)
        self.backend.open()

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
        return result
