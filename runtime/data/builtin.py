"""Built-in data sets addressed as ``builtin:NAME``: shipped in the package, nothing downloaded.

A set is pixels, labels and class names plus its fixed split rule (seeded,
stratified 70/30 ``train``/``val``), so that a run on ``builtin:digits`` is
comparable across machines, and may recommend an input size for the
backbone.  :func:`edgetl.runtime.data.sources.open_data` turns them into records;
this module knows nothing of records, so the two do not import each other.

``builtin:digits`` is ``datasets/digits.npz`` beside this file: the 1,797
8x8 handwritten digits of scikit-learn's ``load_digits`` (the test set of
the UCI "Optical Recognition of Handwritten Digits" data, E. Alpaydin and
C. Kaynak, 1998, https://doi.org/10.24432/C50P49, licensed CC BY 4.0),
with pixel counts 0..16 scaled to uint8 by ``rint(x * 255 / 16)``, and their
labels 0..9.  It was written once with scikit-learn::

    d = sklearn.datasets.load_digits()
    np.savez_compressed("digits.npz", labels=d.target.astype(np.uint8),
                        images=np.clip(np.rint(d.images * (255 / 16)), 0, 255).astype(np.uint8))

so that a device needs only ``pip install edgetl`` to use it; the file is
checked against its sha256 before it is read, without pickle.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

BUILTIN_SPLIT_SEED = 0
BUILTIN_VAL_FRACTION = 0.3
DATASETS_FOLDER = Path(__file__).resolve().parent / "datasets"
DIGITS_FILE = DATASETS_FOLDER / "digits.npz"
DIGITS_SHA256 = "810215dfd144c7fe236415d5541d82c209702171387f86bca2a7bef2e026d328"


@dataclass(frozen=True)
class BuiltinArrays:
    """One built-in set in memory: ``images[i]`` (uint8 pixels) has label ``labels[i]`` into ``class_names``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass(frozen=True)
class BuiltinDataset:
    """A data set that ships inside the installed package."""

    name: str
    description: str
    load_arrays: Callable[[], BuiltinArrays]
    recommended_image_size: int | None = None
    recommended_crop_pct: float | None = None
    split_seed: int = BUILTIN_SPLIT_SEED
    val_fraction: float = BUILTIN_VAL_FRACTION


def _load_digits() -> BuiltinArrays:
    """The shipped digits, refused with a reinstall hint when the file is missing or not the one shipped."""
    try:
        content = DIGITS_FILE.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the built-in digits at {DIGITS_FILE} ({exc.strerror or exc}); "
                          "reinstall edgetl") from exc
    if hashlib.sha256(content).hexdigest() != DIGITS_SHA256:
        raise DataError(f"{DIGITS_FILE} does not match its sha256 (damaged installation); reinstall edgetl")
    with np.load(io.BytesIO(content), allow_pickle=False) as data:     # the bytes just checked
        images, labels = data["images"], data["labels"]
    return BuiltinArrays(images, labels.astype(np.int64), [str(i) for i in range(10)])


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "digits": BuiltinDataset(
        name="digits",
        description="1,797 real 8x8 handwritten digits, 10 classes (UCI optdigits via scikit-learn "
                    "load_digits, CC BY 4.0; shipped with edgetl)",
        load_arrays=_load_digits,
        recommended_image_size=64,
        recommended_crop_pct=1.0,
    ),
}


def builtin_dataset(name: str) -> BuiltinDataset:
    """The built-in set ``name``, or a :class:`DataError` listing the available ones."""
    if name not in BUILTIN_DATASETS:
        raise DataError(
            f"unknown built-in data set '{name}'; available: "
            + ", ".join(f"builtin:{key}" for key in sorted(BUILTIN_DATASETS))
        )
    return BUILTIN_DATASETS[name]
