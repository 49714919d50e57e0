"""The bundle's check set: a few validation images and the fp32 reference's logits on them.

The export measures every artifact's accuracy on the run's validation split,
but some artifacts cannot be measured there as the device will run them: bf16
on a CPU without bf16 (emulated, or not at all), 8-bit int8 for VNNI on a CPU
without VNNI (exactly, but on the float reference, not on its kernels).
Before the runtime chooses such an artifact, the device runs it on these
images and compares its top-1 answers with what the export computed for the
same artifact (stored here for the exact and emulated ones), else with the
fp32 reference.  It is a check that the device computes what was measured,
catching saturating kernels (19% of answers differ) or a silent fallback,
not a new accuracy measurement: 16 images allow one differing answer (more
where ``max_accuracy_drop`` percent of them is more).  The images are stored
as the uint8 crops the network sees, so the device normalizes them with its
own preprocessing, exactly as for a photo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..data.preprocess import normalize
from ..errors import BundleError
from .folder import Bundle

CHECK_FILE = "check.npz"


@dataclass(frozen=True)
class CheckSet:
    images: np.ndarray      # (N, 3, S, S) float32, normalized; a text model's (N, L) int64 token ids
    labels: np.ndarray      # (N,) int64
    logits: np.ndarray      # (N, classes) float32 of the fp32 reference (onnx + head)
    own: dict[str, np.ndarray]   # artifact name -> its logits as the export computed them (exact, emulated)


@dataclass(frozen=True)
class CheckResult:
    n: int
    agree: int              # top-1 answers equal to the reference's (the artifact's own export-time ones, or fp32)
    against: str            # which reference: "export" or "fp32"
    correct: int            # top-1 answers equal to the label
    max_abs_diff: float     # of the logits against the reference
    allowed_disagreements: int

    @property
    def passed(self) -> bool:
        return self.n - self.agree <= self.allowed_disagreements

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def load_check_set(bundle: Bundle) -> CheckSet | None:
    """The bundle's check set (sha256 checked), or None for a bundle exported before it existed."""
    manifest = bundle.manifest
    if not manifest.check:
        return None
    path = bundle.file(manifest.check)
    try:
        with np.load(path, allow_pickle=False) as data:
            crops, labels, logits = data["images"], data["labels"], data["logits"]
            own = {key.split(":", 1)[1]: data[key] for key in data.files if key.startswith("logits:")}
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path} is damaged ({exc}); re-export the bundle") from exc
    if manifest.modality == "text":      # token ids, run as they are
        return CheckSet(crops.astype(np.int64), labels.astype(np.int64), logits.astype(np.float32), own)
    config = manifest.preprocess_config
    images = np.stack([normalize(crop, config) for crop in crops]) if len(crops) else np.zeros((0, 3, 1, 1))
    return CheckSet(images.astype(np.float32), labels.astype(np.int64), logits.astype(np.float32), own)


def check_logits(logits: np.ndarray, check: CheckSet, artifact: str, max_accuracy_drop: float) -> CheckResult:
    """Compare an artifact's logits on the check images with its export-time logits (or fp32's)."""
    n = len(check.labels)
    reference = check.own.get(artifact, check.logits)
    top = logits.argmax(axis=1)
    return CheckResult(
        n=n, agree=int(np.sum(top == reference.argmax(axis=1))), against="export" if artifact in check.own else "fp32",
        correct=int(np.sum(top == check.labels)),
        max_abs_diff=float(np.abs(logits - reference).max()) if n else 0.0,
        allowed_disagreements=max(1, int(math.floor(n * max_accuracy_drop / 100.0 + 1e-9))),
    )
