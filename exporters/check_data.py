"""Write the bundle's check set (``check.npz``): the export's check images and the fp32 reference's logits.

The device uses it to check, before choosing them, the artifacts the export could not measure as the
device runs them (see :mod:`edgetl.runtime.bundle.checkset`); for those the export could compute (exactly on the
float reference, or in emulation) their own logits are stored too, so the device compares like with like.
The images are the uint8 crops of the same validation images the torch parity check uses, so the file is
small (16 x 64 x 64 x 3 bytes for digits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.runtime.bundle.checkset import CHECK_FILE
from edgetl.runtime.bundle.heads import Head
from edgetl.runtime.bundle.manifest import Artifact, FileEntry
from edgetl.runtime.data.preprocess import PreprocessConfig, crop, normalize
from edgetl.runtime.data.text import TextPreprocess
from edgetl.runtime.engines.backends import create_backend


def _logits(backend: str, path: Path, head: Head, images: np.ndarray, precision: str = "fp32") -> np.ndarray:
    with create_backend(backend, path, precision=precision) as runner:
        return head.logits(np.concatenate([runner.infer(images[i:i + 1]) for i in range(len(images))]))


def write_check_data(staging: Path, backbone: Path, head: Head, records: list,
                     preprocess: PreprocessConfig | TextPreprocess, artifacts: list[Artifact]) -> dict:
    """Write ``check.npz`` for ``records`` into the bundle being built; returns its manifest entry.  A text model's
    check set holds the texts' token ids (the device tokenizes nothing for it)."""
    if isinstance(preprocess, TextPreprocess):
        crops = images = preprocess.encode([r.text for r in records])
    else:
        crops = np.stack([crop(r.image, preprocess) for r in records])
        images = np.stack([normalize(c, preprocess) for c in crops])
    arrays = {"images": crops, "labels": np.array([r.label for r in records], dtype=np.int64),
              "logits": _logits("onnxruntime", backbone, head, images).astype(np.float32)}
    for a in artifacts:
        if (a.measured in ("exact", "emulated") or a.precision == "int8") and a.evaluated_with:   # int8: per arch
            arrays[f"logits:{a.name}"] = _logits(a.evaluated_with, staging / a.file, head, images,
                                                 a.precision).astype(np.float32)
    with open(staging / CHECK_FILE, "wb") as handle:
        np.savez(handle, **arrays)
    return {**FileEntry.of(staging, CHECK_FILE).__dict__, "images": len(records), "reference": "onnx"}
