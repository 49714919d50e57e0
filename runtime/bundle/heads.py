"""Classifier heads as plain numpy, shared by the host and the device.

A head maps backbone features ``(N, d)`` to logits ``(N, C)``.  Heads are
stored as ``.npz`` without pickle; the ``kind`` entry selects the class from
:data:`HEAD_KINDS`.  The ridge head keeps its sufficient statistics (float64
Gram matrix and cross terms) so that it can keep learning later from exactly
the same state it was trained with on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import BundleError, ConfigError


class Head:
    """Base class: ``logits(features)`` plus safe ``.npz`` persistence."""

    kind: ClassVar[str]

    def logits(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Head:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, kind=np.array(self.kind), **self.arrays())

    def check_features(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ConfigError(
                f"{self.kind} head expects features of shape (N, {self.feature_dim}), got {features.shape}"
            )
        return features


@dataclass
class LinearHead(Head):
    """``logits = features @ weight.T + bias``."""

    weight: np.ndarray
    bias: np.ndarray
    kind: ClassVar[str] = "linear"

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.check_features(features) @ self.weight.T.astype(np.float32) + self.bias.astype(np.float32)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LinearHead:
        return cls(arrays["weight"], arrays["bias"])


@dataclass
class MLPHead(Head):
    """One hidden ReLU layer: ``relu(f @ w1.T + b1) @ w2.T + b2``."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    kind: ClassVar[str] = "mlp"

    def logits(self, features: np.ndarray) -> np.ndarray:
        hidden = np.maximum(self.check_features(features) @ self.w1.T + self.b1, 0.0)
        return (hidden @ self.w2.T + self.b2).astype(np.float32)

    @property
    def num_classes(self) -> int:
        return int(self.w2.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.w1.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).astype(np.float32) for k in ("w1", "b1", "w2", "b2")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> MLPHead:
        return cls(arrays["w1"], arrays["b1"], arrays["w2"], arrays["b2"])


@dataclass
class RidgeStatistics:
    """Sufficient statistics of a ridge regression onto one-hot targets (float64).

    Adding samples in any order and any number of batches gives the same
    statistics, hence the same solution as one batch fit on all of them.
    """

    gram: np.ndarray          # sum x x^T, (d, d)
    cross: np.ndarray         # sum x y^T, (d, C)
    feature_sum: np.ndarray   # sum x, (d,)
    target_sum: np.ndarray    # sum y, (C,)
    count: int

    @classmethod
    def empty(cls, dim: int, num_classes: int) -> RidgeStatistics:
        return cls(
            np.zeros((dim, dim)), np.zeros((dim, num_classes)), np.zeros(dim), np.zeros(num_classes), 0
        )

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        num_classes = self.cross.shape[1]
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ConfigError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
        y = np.zeros((len(labels), num_classes))
        y[np.arange(len(labels)), labels] = 1.0
        self.gram += x.T @ x
        self.cross += x.T @ y
        self.feature_sum += x.sum(axis=0)
        self.target_sum += y.sum(axis=0)
        self.count += len(labels)

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centred Gram and cross matrices plus the means (the intercept is not penalised)."""
        if self.count == 0:
            raise ConfigError("ridge head has no samples to fit")
        mean_x = self.feature_sum / self.count
        mean_y = self.target_sum / self.count
        gram_c = self.gram - self.count * np.outer(mean_x, mean_x)
        cross_c = self.cross - self.count * np.outer(mean_x, mean_y)
        return gram_c, cross_c, mean_x, mean_y

    def plus(self, other: RidgeStatistics, sign: float = 1.0) -> RidgeStatistics:
        """The statistics of both sample sets (``sign=-1``: of this set without ``other``'s samples)."""
        return RidgeStatistics(self.gram + sign * other.gram, self.cross + sign * other.cross,
                               self.feature_sum + sign * other.feature_sum, self.target_sum + sign * other.target_sum,
                               self.count + int(sign) * other.count)

    def grown(self, num_classes: int) -> RidgeStatistics:
        """The same statistics with zero columns for classes beyond the current ones."""
        extra = num_classes - self.cross.shape[1]
        if extra <= 0:
            return self
        return RidgeStatistics(self.gram, np.hstack([self.cross, np.zeros((self.cross.shape[0], extra))]),
                               self.feature_sum, np.concatenate([self.target_sum, np.zeros(extra)]), self.count)


#: Candidate regularisation strengths, relative to the mean feature variance times n.
ALPHA_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(-5, 3))


def alpha_scale(trace: float, dim: int) -> float:
    """The grid's unit: the mean feature variance times n (the centred Gram matrix's trace over d), so the grid
    adapts to the feature scale; also the alpha used before any held-out choice."""
    return max(trace / dim, 1e-12)


def alpha_on_holdout(eigvals: np.ndarray, eigvecs: np.ndarray, projected: np.ndarray, mean_x: np.ndarray,
                     mean_y: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray) -> float:
    """The :data:`ALPHA_GRID` candidate with the best held-out accuracy, from an eigendecomposition of the
    centred Gram matrix and its eigenbasis' cross terms ``projected`` (Vᵀ C): each candidate costs O(d²)."""
    scale = alpha_scale(float(np.sum(eigvals)), len(eigvals))
    centred_val = np.asarray(val_features, dtype=np.float64) - mean_x
    best_alpha, best_accuracy = scale * ALPHA_GRID[0], -1.0
    for alpha in (scale * factor for factor in ALPHA_GRID):
        weight = eigvecs @ (projected / (eigvals + alpha)[:, None])
        accuracy = float(np.mean(np.argmax(centred_val @ weight + mean_y, axis=1) == val_labels))
        if accuracy > best_accuracy + 1e-12:
            best_alpha, best_accuracy = alpha, accuracy
    return best_alpha


@dataclass
class RidgeHead(LinearHead):
    """A linear head solved in closed form from :class:`RidgeStatistics`."""

    statistics: RidgeStatistics | None = None
    alpha: float = 1.0
    kind: ClassVar[str] = "ridge"

    @classmethod
    def solve(cls, statistics: RidgeStatistics, alpha: float) -> RidgeHead:
        gram_c, cross_c, mean_x, mean_y = statistics.centred()
        dim = gram_c.shape[0]
        weight = np.linalg.solve(gram_c + alpha * np.eye(dim), cross_c)  # (d, C)
        bias = mean_y - mean_x @ weight
        return cls(weight.T.astype(np.float32), bias.astype(np.float32), statistics, float(alpha))

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        val_features: np.ndarray | None = None,
        val_labels: np.ndarray | None = None,
        alpha: float | None = None,
    ) -> RidgeHead:
        """Fit on (features, labels); pick ``alpha`` on the validation set if not given (:func:`alpha_on_holdout`)."""
        statistics = RidgeStatistics.empty(features.shape[1], num_classes)
        statistics.add(features, labels)
        if alpha is None:
            alpha = cls.select_alpha(statistics, val_features, val_labels)
        return cls.solve(statistics, alpha)

    @classmethod
    def select_alpha(
        cls, statistics: RidgeStatistics, val_features: np.ndarray | None, val_labels: np.ndarray | None
    ) -> float:
        gram_c, cross_c, mean_x, mean_y = statistics.centred()
        if val_features is None or val_labels is None or len(val_labels) == 0:
            return alpha_scale(float(np.trace(gram_c)), gram_c.shape[0])      # no eigendecomposition needed
        eigvals, eigvecs = np.linalg.eigh(gram_c)
        return alpha_on_holdout(eigvals, eigvecs, eigvecs.T @ cross_c, mean_x, mean_y, val_features, val_labels)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = super().arrays()
        arrays["alpha"] = np.array(self.alpha)
        if self.statistics is not None:
            s = self.statistics
            arrays.update(
                gram=s.gram, cross=s.cross, feature_sum=s.feature_sum, target_sum=s.target_sum,
                count=np.array(s.count),
            )
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> RidgeHead:
        statistics = None
        if "gram" in arrays:
            statistics = RidgeStatistics(
                arrays["gram"], arrays["cross"], arrays["feature_sum"], arrays["target_sum"],
                int(arrays["count"]),
            )
        return cls(arrays["weight"], arrays["bias"], statistics, float(arrays["alpha"]))


NCM_SCALE = 16.0   # logits are cosine similarities times this, so softmax scores are usable


@dataclass
class NCMHead(Head):
    """``logits = scale * cos(features, class mean)``; the sums and counts let it keep learning."""

    sums: np.ndarray      # (C, d) sums of L2-normalised features, float64
    counts: np.ndarray    # (C,)
    scale: float = NCM_SCALE
    kind: ClassVar[str] = "ncm"

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = normalise_rows(self.check_features(features))
        means = normalise_rows(self.sums / np.maximum(self.counts, 1)[:, None]).astype(np.float32)
        return (self.scale * x @ means.T).astype(np.float32)

    @property
    def num_classes(self) -> int:
        return int(self.sums.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.sums.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums, "counts": self.counts, "scale": np.array(self.scale)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> NCMHead:
        return cls(arrays["sums"], arrays["counts"], float(arrays["scale"]))


def normalise_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


HEAD_KINDS: dict[str, type[Head]] = {"linear": LinearHead, "mlp": MLPHead, "ridge": RidgeHead, "ncm": NCMHead}


def read_npz(path: str | Path, what: str = "") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (``allow_pickle=False``); an unreadable file is a :class:`BundleError` naming
    ``what`` it is and its path."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {what}{path}: {exc}") from exc


def load_head(path: str | Path) -> Head:
    """Load a head written by :meth:`Head.save` (``allow_pickle=False``)."""
    arrays = read_npz(path, "head file ")
    kind = str(arrays.pop("kind", ""))
    if kind not in HEAD_KINDS:
        raise BundleError(f"head file {path} has unknown kind '{kind}' (known: {', '.join(HEAD_KINDS)})")
    try:
        return HEAD_KINDS[kind].from_arrays(arrays)
    except KeyError as exc:
        raise BundleError(f"head file {path} ({kind}) lacks the array {exc}") from exc


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
