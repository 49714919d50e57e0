"""The bundle's check set: a few validation images and the fp32 reference's logits on them.

The export measures every artifact's accuracy on the run's validation split,
but some artifacts cannot be measured there as the device will run them: bf16
on a CPU without bf16, 8-bit int8 for VNNI on a CPU without VNNI (measured
exactly, but not on its kernels).  Before the runtime chooses such an
artifact, the device runs it on these images and requires its top-1 answers
to agree with the fp32 reference (at most ``max_accuracy_drop`` percent of
them may differ, which with 16 images means none).  The images are stored as
the uint8 crops the network sees, so the device normalizes them with its own
preprocessing, exactly as for a photo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError
from .manifest import BundleManifest, verify_file
from .preprocess import normalize

CHECK_FILE = "check.npz"


@dataclass(frozen=True)
class CheckSet:
    images: np.ndarray      # (N, 3, S, S) float32, normalized
    labels: np.ndarray      # (N,) int64
    logits: np.ndarray      # (N, classes) float32 of the fp32 reference (onnx + head)


@dataclass(frozen=True)
class CheckResult:
    n: int
    agree: int              # top-1 answers equal to the fp32 reference's
    correct: int            # top-1 answers equal to the label
    max_abs_diff: float     # of the logits against the reference
    allowed_disagreements: int

    @property
    def passed(self) -> bool:
        return self.n - self.agree <= self.allowed_disagreements

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def load_check_set(bundle: str | Path, manifest: BundleManifest, verify: bool = True) -> CheckSet | None:
    """The bundle's check set, or None for a bundle exported before it existed."""
    if not manifest.check:
        return None
    path = Path(bundle) / manifest.check["file"]
    if verify:
        verify_file(Path(bundle), manifest.check["file"], manifest.check["sha256"])
    try:
        with np.load(path, allow_pickle=False) as data:
            crops, labels, logits = data["images"], data["labels"], data["logits"]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path} is damaged ({exc}); re-export the bundle") from exc
    config = manifest.preprocess_config
    images = np.stack([normalize(crop, config) for crop in crops]) if len(crops) else np.zeros((0, 3, 1, 1))
    return CheckSet(images.astype(np.float32), labels.astype(np.int64), logits.astype(np.float32))


def check_logits(logits: np.ndarray, check: CheckSet, max_accuracy_drop: float) -> CheckResult:
    n = len(check.labels)
    top = logits.argmax(axis=1)
    return CheckResult(
        n=n, agree=int(np.sum(top == check.logits.argmax(axis=1))), correct=int(np.sum(top == check.labels)),
        max_abs_diff=float(np.abs(logits - check.logits).max()) if n else 0.0,
        allowed_disagreements=int(math.floor(n * max_accuracy_drop / 100.0 + 1e-9)),
    )
