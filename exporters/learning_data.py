"""The learning data a bundle ships so the device can keep learning: the run's features.

The device's ridge / NCM updates continue from statistics of the host's
training samples, its held-out accuracy guard needs labelled held-out
samples, and ``sgd`` replays stored samples so earlier classes are not
forgotten.  So the bundle carries the backbone features of the run's
training split (seeded sample, at most the store's per-class bound) and of
its validation split (the held-out part), computed by the fp32 ONNX
backbone exactly as the device computes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.runtime.bundle.heads import Head
from edgetl.runtime.bundle.manifest import FileEntry
from edgetl.runtime.bundle.store import DEFAULT_MAX_HOLDOUT_PER_CLASS, DEFAULT_MAX_PER_CLASS
from edgetl.runtime.bundle.unknown import (
    DEFAULT_KEEP,
    DEFAULT_METHOD,
    DEFAULT_SHRINKAGE,
    PROJECTION_USERS,
    UNKNOWN_FILE,
    UnknownSettings,
    fit_unknown,
)
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.engines.backends import create_backend
from edgetl.runtime.errors import ConfigError
from edgetl.unknown_choice import AUTO, CannotChoose, check_export_settings, choose
from edgetl.unknown_projection import train_projection

from .calibration import ExportData, decode_to_memmap

LEARNING_FILE = "learning/features.npz"


def _capped(records: list[ImageRecord], per_class: int, seed: int) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    labels = np.array([r.label for r in records])
    keep: list[int] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        keep.extend(rows if len(rows) <= per_class else np.sort(rng.choice(rows, per_class, replace=False)))
    return [records[i] for i in sorted(keep)]


def _features(backbone: Path, images: np.ndarray, batch: int = 32) -> np.ndarray:
    with create_backend("onnxruntime", backbone) as runner:
        return np.concatenate([runner.infer(np.ascontiguousarray(images[i:i + batch]))
                               for i in range(0, len(images), batch)])


def write_learning_data(staging: Path, backbone: Path, data: ExportData) -> dict:
    """Write ``learning/features.npz`` into the bundle being built; returns its manifest entry."""
    train = _capped(data.train_records, DEFAULT_MAX_PER_CLASS, seed=0)
    val = _capped(data.val_records, DEFAULT_MAX_HOLDOUT_PER_CLASS, seed=0)
    train_images = decode_to_memmap(train, data.preprocess, data.scratch, "learning-train", data.progress)
    val_index = {id(r): i for i, r in enumerate(data.val_records)}
    val_images = data.val_images[[val_index[id(r)] for r in val]]
    features = np.concatenate([_features(backbone, train_images), _features(backbone, val_images)])
    records = train + val
    path = staging / LEARNING_FILE
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, features=features.astype(np.float32),
                 labels=np.array([r.label for r in records], dtype=np.int64),
                 holdout=np.array([False] * len(train) + [True] * len(val)),
                 keys=np.array([r.content_digest().hex() for r in records], dtype="<U64"))
    entry = FileEntry.of(staging, LEARNING_FILE)
    return {**entry.__dict__, "n_train": len(train), "n_holdout": len(val), "artifact": "onnx",
            "max_per_class": DEFAULT_MAX_PER_CLASS, "max_holdout_per_class": DEFAULT_MAX_HOLDOUT_PER_CLASS}


def write_unknown(staging: Path, head: Head, method: str = DEFAULT_METHOD, keep: float = DEFAULT_KEEP,
                  log=lambda message: None) -> dict:
    """Write ``unknown.npz`` (the unknown-input scorer, fitted on the shipped training rows, with the projection
    trained here for the methods that use one) with its threshold set on the shipped val rows to keep ``keep`` of
    them; returns the manifest's ``unknown`` block.  ``method`` ``auto``: the score is chosen by leave-classes-out
    on the shipped rows (:mod:`edgetl.unknown_choice`), and the block records the choice and every candidate's
    AUROC.  The device's store recomputes scorer and threshold on every commit, the same way
    (:meth:`~edgetl.runtime.bundle.store.FeatureStore.commit`)."""
    check_export_settings(method, keep)
    with np.load(staging / LEARNING_FILE, allow_pickle=False) as data:
        features, labels, holdout = data["features"], data["labels"], data["holdout"]
    shrinkage, extra = DEFAULT_SHRINKAGE, {}
    if method == AUTO:
        log("choosing the unknown-input score: known classes set aside in turn play the unknowns")
        try:
            chosen, candidates = choose(features[~holdout], labels[~holdout], features[holdout], labels[holdout],
                                        head.kind, keep)
        except CannotChoose as exc:        # too few classes or rows to set any aside
            log(f"warning: {exc}; the unknown-input score is {DEFAULT_METHOD}")
            method = DEFAULT_METHOD
        else:
            method, shrinkage = chosen.method, chosen.shrinkage
            extra = {"chosen_by": "leave-classes-out", "candidates": {k: round(v, 4) for k, v in candidates.items()}}
            log(f"unknown-input score: {chosen.label} (AUROC {candidates[chosen.label]:.3f} on known classes set "
                f"aside)")
    projection = None
    if method in PROJECTION_USERS:
        log("training the unknown-input projection on the shipped training rows")
        projection = train_projection(features[~holdout], labels[~holdout], features[holdout], labels[holdout])
    try:
        settings, scorer = fit_unknown(UnknownSettings(method, keep=keep, shrinkage=shrinkage), features[~holdout],
                                       labels[~holdout], features[holdout], head, projection=projection)
    except ConfigError as exc:     # too few rows for this method: the bundle ships no scorer, and says why
        log(f"warning: no unknown-input threshold: {exc}")
        return {}
    settings.extra.update(extra)
    scorer.save(staging / UNKNOWN_FILE)
    entry = FileEntry.of(staging, UNKNOWN_FILE)
    return {**settings.to_dict(), **entry.__dict__}
