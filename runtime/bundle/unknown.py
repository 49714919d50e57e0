"""How unlike the training data an input is: unknown-input scores from what the bundle and store already hold.

Every scorer is fitted on the head-input features of the samples a head learned from (the store's training rows,
or the rows the bundle ships) and gives each input a score, higher meaning more unknown:

* ``msp``: one minus the head's maximum softmax probability (Hendrycks & Gimpel 2017);
* ``energy``: minus the log-sum-exp of the logits (Liu et al. 2020);
* ``mahalanobis``: the squared Mahalanobis distance to the nearest class mean under one shared within-class
  covariance (Lee et al. 2018);
* ``relative-mahalanobis``: that distance less the distance to the mean of all training features under their total
  covariance (Ren et al. 2021): what sets one class apart, not what every input of the domain shares;
* ``knn``: one minus the cosine similarity to the k-th nearest training row (Sun et al. 2022);
* ``projected-knn``: ``knn`` in the hidden layer of a small network trained on the known classes at export (a
  *projection*, ``relu(x Wᵀ + b)``): distances in a space trained to tell the known classes apart, where an input
  of another class lands away from all of them (kNN on supervised features beats kNN on generic ones, Sun et al.
  2022).  The host trains it (:mod:`edgetl.unknown_projection`); the device only applies it;
* ``combined``: the sum of scores, each standardised (centred and scaled) on the held-out known rows: the head's
  doubt (minus the margin between its two highest logits), ``knn``'s distance to what was seen and, when the bundle
  ships a projection, ``projected-knn``'s; they err on different inputs.

The Mahalanobis kinds work on L2-normalised features (as ``knn`` does): on the benchmark's image and text
features that scored higher than raw features.  Covariances are estimated in float64 and shrunk towards a multiple
of the identity, ``(1 - λ) Σ + λ (tr Σ / d) I`` with ``λ = shrinkage`` (:data:`DEFAULT_SHRINKAGE`), so they are
well posed with fewer samples than features, then turned once into a whitening matrix (float32) by a Cholesky
factorisation: scoring costs one or two (d, d) products per input.  ``benchmarks/unknown_inputs.py`` measured every
method and chose :data:`DEFAULT_METHOD` (docs/unknown.md has the table).

The threshold keeps a stated share of known inputs (``keep``, default 0.95): the ``keep`` quantile of the scores of
held-out known inputs (the bundle's validation rows, and the rows the store holds out of every update), so a known
input is rejected with a probability of about ``1 - keep``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BundleError, ConfigError
from .heads import read_npz

METHODS = ("msp", "energy", "mahalanobis", "relative-mahalanobis", "knn", "projected-knn", "combined")
#: The methods that need a projection, and those given one when the bundle ships it (``combined`` adds it).
PROJECTED = ("projected-knn",)
PROJECTION_USERS = (*PROJECTED, "combined")
#: What a store version's ``unknown.npz`` leaves out, rebuilt when it loads: the kNN banks from the version's rows,
#: the projection from the bundle's own ``unknown.npz`` (see :meth:`UnknownScorer.save`).
REBUILT = ("bank", "projected_bank", "projection_w", "projection_b", "basis")
#: ``combined``'s kNN search over a bank of more than this many entries (rows x features) runs in the
#: :data:`SEARCH_DIMS` leading principal directions of the normalised training rows: the search reads the whole bank
#: per input, so its cost grows with it (0.28 ms for 9,003 rows at d = 384, 3.6 % of MiniLM's pass); in 128
#: directions it costs a third, and leave-classes-out scored it the same on banking77 (0.9218 / 0.9280 / 0.9399
#: against 0.9218 / 0.9278 / 0.9411 over three seeds).  Small banks (the photo sets') keep every feature: there it
#: scored 0.005 to 0.008 lower and costs little anyway.  So do features of more than :data:`SEARCH_MAX_DIM`
#: dimensions: every refit (each commit, each version a service loads) recomputes the basis, an eigendecomposition
#: of a (d, d) matrix, about 50 ms at d = 384 but half a second at d = 1280, more than the search it saves there.
SEARCH_ENTRIES = 1_000_000
SEARCH_DIMS = 128
SEARCH_MAX_DIM = 512
DEFAULT_METHOD = "combined"
DEFAULT_KEEP = 0.95
DEFAULT_SHRINKAGE = 0.5
DEFAULT_K = 1
UNKNOWN_FILE = "unknown.npz"
#: The label a rejected input gets (``--reject``).
UNKNOWN_LABEL = "unknown"
#: Below this many held-out rows, the threshold is set on the training rows' own scores (see :func:`fit_threshold`).
MIN_HELD_OUT = 20


@dataclass
class UnknownSettings:
    """What the threshold is and how it was set: the manifest's ``unknown`` block and a store version's."""

    method: str = DEFAULT_METHOD
    threshold: float | None = None
    keep: float = DEFAULT_KEEP
    n: int = 0                      # the known rows the threshold was set on
    on: str = "val"                 # which rows: val (held out) or train (too few held out)
    shrinkage: float = DEFAULT_SHRINKAGE
    k: int = DEFAULT_K
    file: str = UNKNOWN_FILE
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> UnknownSettings | None:
        if not data:
            return None
        known = {k: data[k] for k in ("method", "threshold", "keep", "n", "on", "shrinkage", "k", "file") if k in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in known})


def check_settings(method: str, keep: float) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}", option="unknown_method")
    if not 0.5 <= keep < 1.0:
        raise ConfigError(f"the share of known inputs to keep must lie in [0.5, 1), got {keep:g}",
                          option="unknown_keep")


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


def _doubt(logits: np.ndarray) -> np.ndarray:
    """Minus the margin between the two highest logits (a head with one class: minus its logit)."""
    logits = np.asarray(logits, np.float64)
    if logits.shape[1] < 2:
        return -logits[:, 0]
    top = np.partition(logits, logits.shape[1] - 2, axis=1)
    return -(top[:, -1] - top[:, -2])


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _whitening(covariance: np.ndarray, shrinkage: float) -> np.ndarray:
    """``P`` (d, d) with ``Pᵀ Σ P = I`` for the shrunk ``Σ``, so ``‖(x - μ) P‖²`` is the Mahalanobis distance:
    ``P = L⁻ᵀ`` for the Cholesky factor ``Σ = L Lᵀ`` (a third of an eigendecomposition's time)."""
    dim = len(covariance)
    scale = max(float(np.trace(covariance)) / dim, 1e-12)
    shrunk = (1.0 - shrinkage) * covariance + max(shrinkage, 1e-6) * scale * np.eye(dim)
    try:
        factor = np.linalg.cholesky(shrunk)
    except np.linalg.LinAlgError:          # rounding below zero with a tiny shrinkage: lift the spectrum
        factor = np.linalg.cholesky(shrunk + 1e-6 * scale * np.eye(dim))
    return np.linalg.inv(factor).T


def _nearest(bank: np.ndarray, rows: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """One minus the cosine similarity of each L2-normalised row of ``rows`` to its k-th nearest row of ``bank``
    (float32), the row's own match skipped when ``exclude_self``: the rows are the bank's own."""
    k = min(k, len(bank) - int(exclude_self))
    rank = k - 1 + int(exclude_self)
    out = np.empty(len(rows))
    for start in range(0, len(rows), 256):
        similarity = _normalised(rows[start:start + 256]) @ bank.T
        # the k-th largest similarity (self-matches dropped when asked); k = 1: the maximum
        out[start:start + 256] = similarity.max(axis=1) if rank == 0 else \
            -np.partition(-similarity, rank, axis=1)[:, rank]
    return 1.0 - out


def _search_basis(rows: np.ndarray) -> np.ndarray:
    """(d, r) float32: the :data:`SEARCH_DIMS` leading eigenvectors of the (uncentred) second moment of the
    normalised ``rows``, from the (d, d) Gram matrix or, with fewer rows than features, their SVD (float64)."""
    x = np.asarray(rows, np.float64)
    if len(x) >= x.shape[1]:
        values, vectors = np.linalg.eigh(x.T @ x)
        basis = vectors[:, np.argsort(values)[::-1][:SEARCH_DIMS]]
    else:
        basis = np.linalg.svd(x, full_matrices=False)[2][:SEARCH_DIMS].T
    return np.ascontiguousarray(basis, np.float32)


def _squared_distances(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, C) squared distances between rows of ``z`` and ``centres``, both in float32 (whitened)."""
    return np.maximum((z * z).sum(axis=1)[:, None] - 2.0 * z @ centres.T + (centres * centres).sum(axis=1), 0.0)


@dataclass
class ClassStatistics:
    """Class sums and counts and the Gram matrix (float64) of training rows: enough for every covariance here."""

    sums: np.ndarray       # (C, d)
    counts: np.ndarray     # (C,)
    gram: np.ndarray       # (d, d) Σ x xᵀ

    @classmethod
    def of_rows(cls, features: np.ndarray, labels: np.ndarray, num_classes: int) -> ClassStatistics:
        x = np.asarray(features, np.float64)
        sums = np.zeros((num_classes, x.shape[1]))
        np.add.at(sums, labels, x)
        return cls(sums, np.bincount(labels, minlength=num_classes).astype(np.float64), x.T @ x)

    @property
    def count(self) -> float:
        return float(self.counts.sum())

    def means(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1.0)[:, None]

    def within(self) -> np.ndarray:
        """The shared within-class covariance (classes with samples only)."""
        seen = self.counts > 0
        scatter = self.gram - (self.sums[seen].T / self.counts[seen]) @ self.sums[seen]
        return scatter / max(self.count - int(seen.sum()), 1.0)

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sums.sum(axis=0) / max(self.count, 1.0)
        return (self.gram - self.count * np.outer(mean, mean)) / max(self.count - 1.0, 1.0), mean


class UnknownScorer:
    """A fitted scorer: :meth:`scores` of features (and the head's logits, for ``msp`` and ``energy``)."""

    def __init__(self, method: str, arrays: dict[str, np.ndarray]):
        self.method, self.arrays = method, arrays
        self._banks: dict[str, np.ndarray] = {}      # the kNN banks in float32 (stored as float16), made once

    @property
    def parts(self) -> tuple[str, ...]:
        """What ``combined`` sums: the head's doubt, ``knn`` and, with a projection, ``projected-knn``."""
        if self.method != "combined":
            return (self.method,)
        return tuple(str(p) for p in self.arrays.get("parts", np.array(["margin", "knn"])))

    @property
    def projected(self) -> bool:
        return "projected-knn" in self.parts

    def project(self, features: np.ndarray) -> np.ndarray:
        """The projection's hidden layer: ``relu(x Wᵀ + b)`` (float32)."""
        w, b = self.arrays["projection_w"], self.arrays["projection_b"]
        return np.maximum(np.asarray(features, np.float32) @ w.T + b, 0.0)

    def scores(self, features: np.ndarray, logits: np.ndarray | None = None, exclude_self: bool = False) -> np.ndarray:
        """The scores of ``features`` (N, d) given the head's ``logits`` (N, C) on them; ``exclude_self``: the rows
        are the training rows themselves (``knn`` skips each one's own match)."""
        a, method = self.arrays, self.method
        if method in ("msp", "energy"):
            if logits is None:
                raise ConfigError(f"the {method} score needs the head's logits")
            logits = np.asarray(logits, np.float64)
            if method == "energy":
                return -_logsumexp(logits)
            top = logits.max(axis=1)
            return 1.0 - 1.0 / np.exp(logits - top[:, None]).sum(axis=1)
        features = np.asarray(features, np.float32)
        if method in ("knn", "projected-knn"):
            return self._part(method, features, None, exclude_self)
        if method == "combined":
            if logits is None:
                raise ConfigError("the combined score needs the head's logits")
            scale = a["scale"].reshape(-1, 2)
            return sum((self._part(part, features, logits, exclude_self) - mean) / spread
                       for part, (mean, spread) in zip(self.parts, scale))
        x = _normalised(features)
        own = _squared_distances(x @ a["within"], a["means"]).min(axis=1)
        if method == "mahalanobis":
            return own.astype(np.float64)
        return (own - _squared_distances(x @ a["total"], a["centre"])[:, 0]).astype(np.float64)

    def _part(self, part: str, features: np.ndarray, logits: np.ndarray | None, exclude_self: bool) -> np.ndarray:
        """One of ``combined``'s scores: ``margin`` (the head's doubt), ``knn`` or ``projected-knn``."""
        if part == "margin":
            return _doubt(logits)
        name = "bank" if part == "knn" else "projected_bank"
        if name not in self._banks:
            self._banks[name] = np.ascontiguousarray(self.arrays[name], np.float32)
        if part == "knn":
            rows = _normalised(features) @ self.arrays["basis"] if "basis" in self.arrays else features
        else:
            rows = self.project(features)
        return _nearest(self._banks[name], rows, int(self.arrays["k"]), exclude_self)

    def save(self, path: str | Path, bank: bool = True) -> None:
        """Write the scorer; ``bank=False`` leaves out what a store version rebuilds when it loads
        (:data:`REBUILT`, with :meth:`with_bank`): the kNN banks, from its stored rows, and the projection, from
        the bundle's ``unknown.npz``, so a version stays a delta of kilobytes."""
        arrays = self.arrays if bank else {k: v for k, v in self.arrays.items() if k not in REBUILT}
        with open(path, "wb") as handle:
            np.savez(handle, method=np.array(self.method), **arrays)

    @property
    def needs_bank(self) -> bool:
        if self.method in ("knn", "combined") and "bank" not in self.arrays:
            return True
        return self.projected and "projected_bank" not in self.arrays

    def with_bank(self, train: np.ndarray, projection: tuple[np.ndarray, np.ndarray] | None = None) -> UnknownScorer:
        """The scorer given its kNN banks: the training rows it was fitted on (as :func:`fit_scorer` stores them;
        ``combined`` over a large bank also its search basis, :data:`SEARCH_ENTRIES`), and for a projected scorer the
        ``projection`` (W, b) it was fitted with (the bundle's)."""
        train = np.asarray(train, np.float32)
        if self.method in ("knn", "combined"):
            rows = _normalised(train)
            if self.method == "combined" and train.size > SEARCH_ENTRIES and \
                    SEARCH_DIMS < train.shape[1] <= SEARCH_MAX_DIM:
                self.arrays["basis"] = _search_basis(rows)
                rows = _normalised(rows @ self.arrays["basis"])
            else:
                self.arrays.pop("basis", None)
            self.arrays["bank"] = rows.astype(np.float16)
        if self.projected:
            if "projection_w" not in self.arrays:
                if projection is None:
                    raise BundleError("this unknown-input scorer needs the bundle's projection "
                                      f"({UNKNOWN_FILE} of the exported bundle), which is missing")
                self.arrays["projection_w"], self.arrays["projection_b"] = _projection_arrays(projection)
            self.arrays["projected_bank"] = _normalised(self.project(train)).astype(np.float16)
        self._banks = {}
        return self

    @classmethod
    def load(cls, path: str | Path) -> UnknownScorer:
        arrays = read_npz(path)
        method = str(arrays.pop("method", ""))
        if method not in METHODS:
            raise BundleError(f"{path} holds an unknown-input scorer of unknown method '{method}'")
        return cls(method, arrays)


def _projection_arrays(projection: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    w, b = (np.asarray(a, np.float32) for a in projection)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise BundleError(f"an unknown-input projection must be W (h, d) and b (h,), got {w.shape} and {b.shape}")
    return w, b


def fit_scorer(method: str, train: np.ndarray | None = None, labels: np.ndarray | None = None,
               num_classes: int | None = None, shrinkage: float = DEFAULT_SHRINKAGE, k: int = DEFAULT_K,
               reference: tuple[np.ndarray, np.ndarray] | None = None,
               projection: tuple[np.ndarray, np.ndarray] | None = None) -> UnknownScorer:
    """A scorer of ``method`` fitted on the training rows ``train`` and their ``labels`` (the Mahalanobis kinds'
    class means and covariances, the kNN banks); ``msp`` and ``energy`` need neither.  ``projection`` (W, b): the
    host-trained projection ``projected-knn`` needs and ``combined`` adds when given.  ``combined`` standardises its
    scores on known rows ``reference`` (features, logits): the held-out rows, else the training rows (each without
    itself for the kNN scores)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}", option="unknown_method")
    if method in ("msp", "energy"):
        return UnknownScorer(method, {})
    arrays: dict[str, np.ndarray] = {}
    if train is None or len(train) < 2:
        raise ConfigError(f"the {method} score needs at least two training rows")
    if method in PROJECTED and projection is None:
        raise ConfigError(f"the {method} score needs a projection trained at export (edgetl export "
                          f"--unknown-method {method}); this bundle ships none", option="unknown_method")
    train = np.asarray(train, np.float32)
    if method in ("knn", "projected-knn", "combined"):
        arrays["k"] = np.array(max(1, min(k, len(train) - 1)))
    if method == "combined":
        arrays["parts"] = np.array(["margin", "knn"] + (["projected-knn"] if projection is not None else []))
    if method in ("mahalanobis", "relative-mahalanobis"):
        statistics = ClassStatistics.of_rows(_normalised(train), labels, num_classes or int(labels.max()) + 1)
        seen = statistics.counts > 0
        if statistics.count < 2 or not seen.any():
            raise ConfigError(f"the {method} score needs training statistics of at least two samples")
        within = _whitening(statistics.within(), shrinkage)
        arrays["within"] = within.astype(np.float32)
        # a class without samples is never the nearest: only the classes with samples are kept (an infinite
        # mean would turn every distance into inf - inf = NaN)
        arrays["means"] = (statistics.means()[seen] @ within).astype(np.float32)
        if method != "mahalanobis":
            total, centre = statistics.total()
            whitening = _whitening(total, shrinkage)
            arrays["total"] = whitening.astype(np.float32)
            arrays["centre"] = (centre @ whitening)[None, :].astype(np.float32)
    scorer = UnknownScorer(method, arrays)
    if method in ("knn", "projected-knn", "combined"):
        scorer.with_bank(train, projection)
    if method == "combined":
        if reference is None or len(reference[0]) < 2:
            raise ConfigError("the combined score needs known rows (and their logits) to standardise on")
        rows, logits = np.asarray(reference[0], np.float32), reference[1]
        scale = []
        for part in scorer.parts:
            values = scorer._part(part, rows, logits, exclude_self=rows is train)
            scale += [values.mean(), max(values.std(), 1e-12)]
        arrays["scale"] = np.array(scale)
    return scorer


def fit_unknown(settings: UnknownSettings, train: np.ndarray, labels: np.ndarray, held_out: np.ndarray,
                head, projection: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[UnknownSettings, UnknownScorer]:
    """The scorer of ``settings.method`` fitted on a head's training rows and its threshold set to keep
    ``settings.keep`` of the known held-out rows ``held_out`` (all classes, new ones included: the store holds out
    a share of every update's samples).  With fewer than :data:`MIN_HELD_OUT` held-out rows, the threshold is set
    on the training rows' own scores instead (each row left out of ``knn``'s bank), recorded as ``on: train``:
    the scores of rows a scorer was fitted on run low, so it rejects more known inputs than stated.
    ``projection``: the bundle's (see :func:`fit_scorer`)."""
    check_settings(settings.method, settings.keep)
    train = np.asarray(train, np.float32)
    held_out = np.asarray(held_out, np.float32).reshape(-1, train.shape[1])
    enough = len(held_out) >= MIN_HELD_OUT
    rows = held_out if enough else train
    logits = head.logits(rows)
    scorer = fit_scorer(settings.method, train, labels, head.num_classes, settings.shrinkage, settings.k,
                        reference=(rows, logits), projection=projection)
    scores = scorer.scores(rows, logits, exclude_self=not enough)      # a training row is not its own neighbour
    fitted = UnknownSettings(settings.method, keep_threshold(scores, settings.keep), settings.keep, len(rows),
                             "val" if enough else "train", settings.shrinkage, settings.k, settings.file,
                             {"parts": list(scorer.parts)} if settings.method == "combined" else {})
    return fitted, scorer


def keep_threshold(scores: np.ndarray, keep: float) -> float:
    """The score at or below which a share ``keep`` of ``scores`` lie (the known inputs kept)."""
    if len(scores) == 0:
        raise ConfigError("no known inputs to set the unknown threshold on")
    return float(np.quantile(np.asarray(scores, np.float64), keep, method="higher"))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling ``unknown`` scores (positives) from ``known`` ones, ties counted half
    (the Mann-Whitney statistic)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        raise ConfigError("AUROC needs known and unknown inputs")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    sorted_scores = both[order]          # average the ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1]):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    positive = ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2.0
    return float(positive / (len(known) * len(unknown)))
