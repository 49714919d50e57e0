"""On-disk cache of frozen-backbone outputs, memory-mapped on read.

An entry is keyed by everything that determines its content: the backbone
and a digest of its weights, the freeze point, the preprocessing, the
extraction precision and the content of every input image, in order.  A
second fine-tune on the same data with other head settings therefore does no
backbone pass at all.  Which engine computed an entry (eager torch, or OpenVINO /
ONNX Runtime on the exported frozen part) is not part of the key: an engine is
used only after matching torch within 1e-4 (see :mod:`edgetl.engines`).  Entries are written to a temporary folder and renamed
into place, so a killed extraction never leaves a partial entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgetl.runtime.data import ImageRecord
from edgetl.runtime.fsutil import atomic_directory

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    env = os.environ.get("EDGETL_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgetl" / "features"


@dataclass
class CachedFeatures:
    """Outputs of the frozen part for every record (rows of skipped images are zero)."""

    key: str
    features: np.ndarray   # (N, ...) float32, memory-mapped when read from disk
    valid: np.ndarray      # (N,) bool: False where the image was skipped as bad
    skipped: list[str]
    hit: bool


def cache_key(
    backbone: str,
    weights_sha256: str,
    freeze_stage: int,
    preprocess: dict,
    precision: str,
    records: Sequence[ImageRecord],
    skip_bad: bool,
) -> str:
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "freeze_stage": freeze_stage,
        "preprocess": preprocess,
        "precision": precision,
        "skip_bad": skip_bad,
        "count": len(records),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for record in records:
        digest.update(record.content_digest())
    return digest.hexdigest()


class FeatureCache:
    """A folder of cache entries, one subfolder per key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> CachedFeatures | None:
        folder = self.path(key)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
            valid = np.load(folder / "valid.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if meta.get("format") != CACHE_FORMAT or len(valid) != len(features):
            return None
        return CachedFeatures(key, features, valid, list(meta.get("skipped", [])), hit=True)

    def store(self, key: str, features: np.ndarray, valid: np.ndarray, skipped: list[str]) -> CachedFeatures:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_directory(self.path(key), overwrite=True) as staging:
            np.save(staging / "features.npy", np.ascontiguousarray(features, dtype=np.float32))
            np.save(staging / "valid.npy", valid.astype(bool))
            (staging / "meta.json").write_text(
                json.dumps({"format": CACHE_FORMAT, "shape": list(features.shape), "skipped": skipped})
            )
        loaded = self.load(key)
        if loaded is None:
            raise OSError(f"feature cache entry {self.path(key)} could not be read back after writing")
        loaded.hit = False
        return loaded
