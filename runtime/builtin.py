"""Built-in data sets addressed as ``builtin:NAME``; nothing is downloaded.

Each set has fixed, seeded, stratified 70/30 ``train``/``val`` splits, so a
run on ``builtin:digits`` is comparable across machines, and may recommend an
input size for the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .data import ImageRecord, LabeledData, stratified_split
from .errors import DataError, MissingDependencyError

BUILTIN_SPLIT_SEED = 0
BUILTIN_VAL_FRACTION = 0.3


@dataclass(frozen=True)
class BuiltinDataset:
    """A data set that ships inside an installed package."""

    name: str
    description: str
    load_arrays: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]
    recommended_image_size: int | None = None
    recommended_crop_pct: float | None = None


def _load_digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 real 8x8 handwritten digits, as uint8 grayscale."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", "host", "builtin:digits") from exc
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64), [str(i) for i in range(10)]


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        name="digits",
        description="scikit-learn load_digits: 1,797 real 8x8 handwritten digits, 10 classes",
        load_arrays=_load_digits,
        recommended_image_size=64,
        recommended_crop_pct=1.0,
    ),
}


def open_builtin(name: str) -> LabeledData:
    if name not in BUILTIN_DATASETS:
        raise DataError(
            f"unknown built-in data set '{name}'; available: "
            + ", ".join(f"builtin:{key}" for key in sorted(BUILTIN_DATASETS))
        )
    spec = BUILTIN_DATASETS[name]
    images, labels, class_names = spec.load_arrays()
    train_idx, val_idx = stratified_split(labels, BUILTIN_VAL_FRACTION, BUILTIN_SPLIT_SEED)

    def records(indices: list[int]) -> list[ImageRecord]:
        return [ImageRecord(f"builtin:{name}#{i}", int(labels[i]), images[i]) for i in indices]

    return LabeledData(
        address=f"builtin:{name}",
        class_names=class_names,
        splits={"train": records(train_idx), "val": records(val_idx)},
        recommended_image_size=spec.recommended_image_size,
        recommended_crop_pct=spec.recommended_crop_pct,
    )
