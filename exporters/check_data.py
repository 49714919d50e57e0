"""Write the bundle's check set (``check.npz``): the export's check images and the fp32 reference's logits.

The device uses it to check, before choosing them, the artifacts the export could not measure as the
device runs them (see :mod:`edgetl.runtime.checkset`).  The images are the uint8 crops of the same
validation images the torch parity check uses, so the file is small (16 x 64 x 64 x 3 bytes for digits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.runtime.backends import create_backend
from edgetl.runtime.checkset import CHECK_FILE
from edgetl.runtime.data import ImageRecord
from edgetl.runtime.heads import Head
from edgetl.runtime.manifest import FileEntry
from edgetl.runtime.preprocess import PreprocessConfig, crop, normalize


def write_check_data(staging: Path, backbone: Path, head: Head, records: list[ImageRecord],
                     preprocess: PreprocessConfig) -> dict:
    """Write ``check.npz`` for ``records`` into the bundle being built; returns its manifest entry."""
    crops = np.stack([crop(r.image, preprocess) for r in records])
    images = np.stack([normalize(c, preprocess) for c in crops])
    with create_backend("onnxruntime", backbone) as runner:
        logits = head.logits(runner.infer(images)).astype(np.float32)
    with open(staging / CHECK_FILE, "wb") as handle:
        np.savez(handle, images=crops, labels=np.array([r.label for r in records], dtype=np.int64), logits=logits)
    return {**FileEntry.of(staging, CHECK_FILE).__dict__, "images": len(records), "reference": "onnx"}
