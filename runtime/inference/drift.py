"""Drift: how far what the model is given has moved from what its head learned from, measured per window of inputs.

The reference is the training statistics the feature store already keeps (the ridge statistics: count, feature
sum, Gram matrix and class sums; :class:`~edgetl.runtime.bundle.heads.RidgeStatistics`), in the head's input space
(features after the ``adapt`` adapter).  From them: the class means and the shared within-class covariance, shrunk
towards its mean variance times the identity (``shrinkage``, by default ``d / (d + n)`` within 0.05 and 0.5: a few
hundred rows do not determine a 1280 x 1280 matrix), whose inverse is the metric, kept as its ``components``
leading eigenvectors plus one value for every other direction.  Each input ``x`` then has its nearest class mean,
the residual ``r = x - mean_c`` and its distance ``|r|^2`` in the metric (the Mahalanobis distance to its nearest
class, Lee et al. 2018): large for an input unlike every class, and indifferent to which class it is.

A window of ``n`` inputs is scored by two statistics, each standardised by its null distribution:

* ``distance``: the mean ``|r|^2`` of its inputs (inputs away from every class: noise, blur, fog);
* ``shift``: ``|sum r|^2 / n``, which grows with ``n`` for a shift the inputs share (brightness, a colour cast,
  another phrasing) where per-input distances barely move, less what the window's mix of classes accounts for
  (:func:`composition_bias`), so that a window holding one class is not taken for drift;

and the window's drift score is the larger of the two standardised values.  Its alarm level is the quantile of the
score on ``null_windows`` windows of ``n`` inputs drawn (seeded, with replacement) from rows the reference did not
learn from (the store's held-out rows; the training rows themselves when there are none, which makes alarms
likelier and is said in :attr:`DriftDetector.calibrated_on`), at the stated false-alarm rate (default: 1 in 1,000
clean windows).  ``benchmarks/drift.py`` measured the choice against a window-mean distance, MMD and each
statistic alone.

:class:`DriftMonitor` keeps the running statistics of a stream in fixed memory (the current window's residual sums
and per-input values, the exponentially weighted feature mean and variance, the last window's class shares):
``serve`` feeds it, ``/metrics`` shows it.  Everything here is numpy; no random choice is unseeded.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from ..bundle.heads import RidgeStatistics
from ..bundle.store import LearnerState, Samples
from ..errors import BundleError, ConfigError

#: The default window: inputs per scored window (``edgetl-rt drift --window``, ``serve``'s monitor).
DEFAULT_WINDOW = 64
#: The default false-alarm rate: clean windows per thousand that may raise an alarm.
DEFAULT_FALSE_ALARMS = 1.0
#: Shrinkage of the within-class covariance towards (its mean variance) x identity, by default ``d / (d + n)`` for
#: ``n`` training samples of ``d`` features, within these bounds: benchmarks/drift.py found more shrinkage better on
#: clothing10 (d = 1280, 341 samples: 0.5 over 0.25 and 0.1) and less on banking77 (d = 384, 10,003: 0.05 over 0.1,
#: 0.25 and 0.5).
SHRINKAGE_BOUNDS = (0.05, 0.5)
#: Null windows drawn to set the alarm level: at a rate of 1 in 1,000, twenty windows lie beyond it.
DEFAULT_NULL_WINDOWS = 20000
#: The most null windows a level is drawn from (a bound on the work behind a rare false-alarm rate): 200,000 gives
#: twenty windows beyond a level of 0.1 per 1,000.
MAX_NULL_WINDOWS = 200_000
#: Half-life (in inputs) of the monitor's exponentially weighted feature mean and variance.
DEFAULT_HALFLIFE = 256
#: Leading components of the covariance kept exactly in the metric (the others share their mean eigenvalue).
DEFAULT_COMPONENTS = 128
#: Calibration rows kept at most (a seeded sample beyond): their residuals' Gram matrix (float32, rows x rows: 4 MB)
#: stays with the detector for the alarm levels of other window sizes.
MAX_CALIBRATION_ROWS = 1000
METHOD = "whitened class-residual shift + mean class distance"


def _standardise(value, mean: float, spread: float):
    return (value - mean) / spread


def auto_shrinkage(dim: int, count: int) -> float:
    """``d / (d + n)`` within :data:`SHRINKAGE_BOUNDS`: more shrinkage where fewer samples determine the matrix."""
    low, high = SHRINKAGE_BOUNDS
    return float(min(high, max(low, dim / (dim + count))))


def leading_eigenpairs(matrix: np.ndarray, k: int, iterations: int = 4, oversample: int = 16,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending) and their eigenvectors (d, k) of a symmetric PSD matrix.

    All of them by ``eigh`` when ``k`` is most of the matrix; else by seeded subspace iteration (Halko et al. 2011:
    ``iterations`` power steps on ``k + oversample`` columns), O(d^2 k) instead of O(d^3): at d = 1280 and k = 128
    a few times cheaper, which ``serve`` pays for every head version it picks up.
    """
    dim = len(matrix)
    if k + oversample >= dim // 2:
        values, vectors = np.linalg.eigh(matrix)
        return values[::-1][:k], vectors[:, ::-1][:, :k]
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(matrix @ rng.standard_normal((dim, k + oversample)))
    for _ in range(iterations):
        basis, _ = np.linalg.qr(matrix @ basis)
    values, rotation = np.linalg.eigh(basis.T @ matrix @ basis)
    order = np.argsort(values)[::-1][:k]
    return values[order], basis @ rotation[:, order]


@dataclass
class Residuals:
    """Per input: its residual from its nearest class mean (``raw``, in feature space, and ``proj``, its coordinates
    on the reference's leading components), its distance to that class and the class."""

    raw: np.ndarray        # (n, d) float32
    proj: np.ndarray       # (n, k) float32
    distance: np.ndarray   # (n,) float64
    nearest: np.ndarray    # (n,) int64

    def __len__(self) -> int:
        return len(self.distance)

    def take(self, index) -> Residuals:
        return Residuals(self.raw[index], self.proj[index], self.distance[index], self.nearest[index])


@dataclass
class DriftReference:
    """What inputs are compared with: the training mean, the class means, and the metric of the shared
    within-class covariance, shrunk, kept as its ``components`` leading eigenvectors with their eigenvalues and
    one value for every other direction (the mean of the rest, so the trace is kept): a distance costs
    O((components + classes) x d) per input, not O(d^2)."""

    mean: np.ndarray           # (d,) float32
    basis: np.ndarray          # (d, k) float32: leading eigenvectors
    inv_values: np.ndarray     # (k,) 1 / eigenvalue
    inv_rest: float            # 1 / the eigenvalue of every other direction
    offsets: np.ndarray        # (C, d) float32: class mean - mean
    offset_proj: np.ndarray    # (C, k) float32
    class_counts: np.ndarray   # (C,) training samples per class
    variance: np.ndarray       # (d,) each feature's training variance (all classes)
    count: int
    shrinkage: float

    @property
    def dim(self) -> int:
        return len(self.mean)

    @property
    def class_shares(self) -> np.ndarray:
        return self.class_counts / self.class_counts.sum()

    @classmethod
    def from_statistics(cls, statistics: RidgeStatistics, shrinkage: float | None = None,
                        components: int = DEFAULT_COMPONENTS) -> DriftReference:
        """``shrinkage`` None: :func:`auto_shrinkage`."""
        counts = np.asarray(statistics.target_sum, np.float64)
        present = counts > 0
        if statistics.count < 2 or not present.any():
            raise BundleError("drift needs training statistics: the bundle ships no learning data and the store "
                              "has learned nothing")
        n, dim = float(statistics.count), len(statistics.feature_sum)
        shrinkage = auto_shrinkage(dim, statistics.count) if shrinkage is None else float(shrinkage)
        if not 0.0 < shrinkage <= 1.0:
            raise ConfigError(f"must lie in (0, 1], got {shrinkage:g}", option="shrinkage")
        mean = statistics.feature_sum / n
        sums = statistics.cross[:, present]                                  # (d, C') class sums
        scatter = statistics.gram - (sums / counts[present]) @ sums.T        # within-class scatter
        covariance = scatter / max(n - present.sum(), 1.0)
        covariance = (covariance + covariance.T) / 2
        trace = float(np.trace(covariance))
        level = max(trace / dim, 1e-12)
        k = min(int(components), dim)
        values, basis = leading_eigenpairs(covariance, k)
        floor = shrinkage * level
        shrunk = (1.0 - shrinkage) * np.maximum(values, 0.0) + floor
        rest = ((1.0 - shrinkage) * max(trace - float(np.maximum(values, 0.0).sum()), 0.0) / (dim - k) + floor
                if dim > k else floor)
        offsets = np.zeros((len(counts), dim))
        offsets[present] = (sums / counts[present]).T - mean
        variance = np.maximum(np.diag(statistics.gram) / n - mean * mean, 0.0)
        return cls(mean.astype(np.float32), basis.astype(np.float32), 1.0 / shrunk, float(1.0 / rest),
                   offsets.astype(np.float32), (offsets @ basis).astype(np.float32), counts, variance,
                   int(statistics.count), float(shrinkage))

    @functools.cached_property
    def _classes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The class means' parts of a distance, float64: ``o * inv_rest`` (C, d), ``q * (inv_values - inv_rest)``
        (C, k) and each class's own term, infinite for a class with no sample (never the nearest)."""
        o, q = self.offsets.astype(np.float64), self.offset_proj.astype(np.float64)
        constant = self.norm_sq(o, q)
        constant[self.class_counts <= 0] = np.inf
        return o * self.inv_rest, q * (self.inv_values - self.inv_rest), constant[None, :]

    def norm_sq(self, raw: np.ndarray, proj: np.ndarray) -> np.ndarray:
        """Squared length in the metric of vectors given by their feature-space values and their coordinates on the
        leading components (the last axis)."""
        raw, proj = np.asarray(raw, np.float64), np.asarray(proj, np.float64)
        return ((raw * raw).sum(-1) - (proj * proj).sum(-1)) * self.inv_rest + (proj * proj * self.inv_values).sum(-1)

    def residuals(self, features: np.ndarray) -> Residuals:
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"features of shape {x.shape} do not match the reference's {self.dim} features")
        y = x - self.mean
        p = y @ self.basis
        o, q, constant = self._classes
        yd, pd = y.astype(np.float64), p.astype(np.float64)
        # |y - o_c|^2 in the metric for every class at once, by expanding the squares: the terms of y alone, the
        # cross terms (one product with the class means, their weights folded in), the classes' own terms
        own = ((yd * yd).sum(1) - (pd * pd).sum(1)) * self.inv_rest + (pd * pd) @ self.inv_values
        distances = own[:, None] - 2 * (yd @ o.T + pd @ q.T) + constant
        nearest = np.argmin(distances, axis=1)
        raw, proj = y - self.offsets[nearest], p - self.offset_proj[nearest]
        return Residuals(raw, proj, self.norm_sq(raw, proj), nearest)


@dataclass
class WindowStatistics:
    """The two raw statistics of one window (see the module docstring)."""

    distance: float
    shift: float
    n: int


def composition_bias(reference: DriftReference, nearest: np.ndarray, unit: float) -> np.ndarray:
    """What a window's ``shift`` owes to its mix of classes rather than to drift, for windows of nearest classes
    ``nearest`` (n,) or (windows, n): each class mean is estimated from ``n_c`` training samples, so its error (of
    expected squared length ``unit / n_c``, ``unit`` the mean distance of clean inputs) adds
    ``unit * sum_c k_c^2 / n_c / n`` to a window holding ``k_c`` inputs of class ``c``: a window of one class would
    otherwise look shifted."""
    nearest = np.atleast_2d(nearest)
    counts = np.zeros((len(nearest), len(reference.class_counts)))
    np.add.at(counts, (np.repeat(np.arange(len(nearest)), nearest.shape[1]), nearest.reshape(-1)), 1.0)
    per_sample = np.divide(1.0, reference.class_counts, out=np.zeros(len(reference.class_counts)),
                           where=reference.class_counts > 0)
    return unit * (counts * counts) @ per_sample / nearest.shape[1]


def window_statistics(reference: DriftReference, residuals: Residuals, unit: float) -> WindowStatistics:
    """``unit``: the mean distance of clean inputs (the detector's), for :func:`composition_bias`."""
    n = len(residuals)
    total = reference.norm_sq(residuals.raw.sum(0, dtype=np.float64), residuals.proj.sum(0, dtype=np.float64))
    bias = float(composition_bias(reference, residuals.nearest, unit)[0])
    return WindowStatistics(float(residuals.distance.mean()), float(total) / n - bias, n)


@dataclass
class NullLevel:
    """The null distribution of the score on clean windows of ``n`` inputs: the standardisation of each
    statistic, and the alarm level on the combined score."""

    n: int
    distance_mean: float
    distance_sd: float
    shift_mean: float
    shift_sd: float
    threshold: float
    windows: int

    def score(self, stats: WindowStatistics) -> float:
        return max(_standardise(stats.distance, self.distance_mean, self.distance_sd),
                   _standardise(stats.shift, self.shift_mean, self.shift_sd))


def _recentred(reference: DriftReference, residuals: Residuals) -> Residuals:
    """The calibration residuals with their mean shrunk to an unbiased size.

    Windows drawn from a finite pool inherit the pool's own mean residual, whose squared length exceeds that of the
    population (what every future window shares: the reference's own estimation error) by ``E|r|^2 / rows`` on
    average; left as it is, it inflates the null ``shift`` and hides drift.  The mean is scaled so that its
    squared length is the unbiased estimate ``max(0, |mean|^2 - E|r - mean|^2 / rows)``.
    """
    rows = len(residuals)
    mean_raw, mean_proj = residuals.raw.mean(0, dtype=np.float64), residuals.proj.mean(0, dtype=np.float64)
    size = float(reference.norm_sq(mean_raw, mean_proj))
    spread = float(reference.norm_sq(residuals.raw - mean_raw, residuals.proj - mean_proj).sum()) / max(rows - 1, 1)
    keep = np.sqrt(max(0.0, size - spread / rows) / size) if size > 0 else 0.0
    return Residuals((residuals.raw - (1 - keep) * mean_raw).astype(np.float32),
                     (residuals.proj - (1 - keep) * mean_proj).astype(np.float32), residuals.distance,
                     residuals.nearest)


class _Pool:
    """Calibration rows prepared for drawing windows: their distances and the Gram matrix of their residuals in
    the metric, so that a window's shift is a sum over its pairs (no d-dimensional work per window)."""

    def __init__(self, reference: DriftReference, residuals: Residuals):
        r = _recentred(reference, residuals)
        raw, proj = r.raw.astype(np.float64), r.proj.astype(np.float64)
        self.gram = ((raw @ raw.T - proj @ proj.T) * reference.inv_rest +
                     (proj * reference.inv_values) @ proj.T).astype(np.float32)
        self.distance, self.nearest, self.reference = r.distance, r.nearest, reference
        self.unit = float(r.distance.mean())


def null_level(pool: _Pool, n: int, false_alarm_rate: float, windows: int, seed: int) -> NullLevel:
    """Standardisations and alarm level for windows of ``n`` inputs drawn with replacement from calibration rows,
    seeded."""
    rng = np.random.default_rng([seed, n])
    raw_distance = np.empty(windows)
    raw_shift = np.empty(windows)
    chunk = max(1, (1 << 21) // (n * n))
    for start in range(0, windows, chunk):
        stop = min(windows, start + chunk)
        index = rng.integers(0, len(pool.distance), size=(stop - start, n))
        raw_distance[start:stop] = pool.distance[index].mean(axis=1)
        pairs = pool.gram[index[:, :, None], index[:, None, :]].sum(axis=(1, 2), dtype=np.float64)
        raw_shift[start:stop] = pairs / n - composition_bias(pool.reference, pool.nearest[index], pool.unit)
    spread = lambda v: max(float(v.std()), 1e-12 * max(1.0, abs(float(v.mean()))))     # noqa: E731
    level = NullLevel(n, float(raw_distance.mean()), spread(raw_distance), float(raw_shift.mean()),
                      spread(raw_shift), 0.0, windows)
    scores = np.maximum(_standardise(raw_distance, level.distance_mean, level.distance_sd),
                        _standardise(raw_shift, level.shift_mean, level.shift_sd))
    level.threshold = float(np.quantile(scores, 1.0 - false_alarm_rate, method="higher"))
    return level


@dataclass
class WindowScore:
    """One scored window: its inputs ``[start, stop)``, drift score, alarm, and what it was made of."""

    index: int
    start: int
    stop: int
    score: float
    alarm: bool
    distance: float
    shift: float
    class_shares: dict[str, float] = field(default_factory=dict)
    unknown_rate: float | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        if self.unknown_rate is None:
            del out["unknown_rate"]
        return out


class DriftDetector:
    """A reference and its calibration rows: scores windows of any size, each size's alarm level drawn once.

    ``calibration`` are feature rows the reference did not learn from (held-out rows); ``calibrated_on`` says
    which rows they are, for reports.
    """

    def __init__(self, reference: DriftReference, calibration: np.ndarray, calibrated_on: str = "held-out rows",
                 false_alarms: float = DEFAULT_FALSE_ALARMS, null_windows: int = DEFAULT_NULL_WINDOWS, seed: int = 0):
        if not 0.0 < false_alarms < 1000.0:
            raise ConfigError(f"must lie in (0, 1000) windows per thousand, got {false_alarms:g}",
                              option="false_alarms")
        if len(calibration) < 2:
            raise BundleError("drift needs at least 2 rows to calibrate its alarm level; the store has "
                              f"{len(calibration)}")
        if null_windows * false_alarms / 1000.0 < 5:
            raise ConfigError(f"{null_windows} null windows put fewer than 5 beyond a level of {false_alarms:g} "
                              "per 1,000; draw more", option="null_windows")
        self.reference = reference
        self.calibration_rows = len(calibration)
        self.calibrated_on = calibrated_on
        self.false_alarms, self.null_windows, self.seed = float(false_alarms), int(null_windows), int(seed)
        if len(calibration) > MAX_CALIBRATION_ROWS:
            keep = np.random.default_rng(self.seed).choice(len(calibration), MAX_CALIBRATION_ROWS, replace=False)
            calibration = np.asarray(calibration)[np.sort(keep)]
        self._pool = _Pool(reference, reference.residuals(calibration))
        self._levels: dict[int, NullLevel] = {}
        self._lock = threading.Lock()

    def level(self, n: int) -> NullLevel:
        with self._lock:
            if n not in self._levels:
                self._levels[n] = null_level(self._pool, n, self.false_alarms / 1000.0, self.null_windows,
                                             self.seed)
            return self._levels[n]

    @property
    def unit(self) -> float:
        """The mean distance of the calibration rows (see :func:`composition_bias`)."""
        return self._pool.unit

    def statistics(self, residuals: Residuals) -> WindowStatistics:
        return window_statistics(self.reference, residuals, self._pool.unit)

    def score(self, residuals: Residuals) -> tuple[float, bool, WindowStatistics]:
        stats = self.statistics(residuals)
        level = self.level(stats.n)
        value = level.score(stats)
        return value, value > level.threshold, stats

    def score_features(self, features: np.ndarray) -> tuple[float, bool]:
        """The drift score of a set of features taken as one window (at least 2 rows), and whether it is over its
        size's alarm level: e.g. a guard comparing target features before and after an adapter."""
        if len(features) < 2:
            raise ConfigError(f"a drift score needs at least 2 inputs, got {len(features)}")
        value, alarm, _ = self.score(self.reference.residuals(features))
        return value, alarm

    def calibration(self, n: int) -> dict:
        """The alarm level of windows of ``n`` and how it was set (reports' ``calibration`` object)."""
        level = self.level(n)
        return {"threshold": level.threshold, "false_alarms_per_1000": self.false_alarms,
                "null_windows": level.windows, "seed": self.seed, "rows": self.calibration_rows,
                "rows_from": self.calibrated_on, "shrinkage": self.reference.shrinkage,
                "reference_count": self.reference.count}


def detector_for(bundle, version=None, false_alarms: float = DEFAULT_FALSE_ALARMS,
                 shrinkage: float | None = None, null_windows: int | None = None,
                 seed: int = 0) -> DriftDetector:
    """The detector of an opened bundle: the store's current version (or ``version``) when the device has learned,
    else the statistics and rows the bundle ships.  Reads only; never writes the store.  ``null_windows`` None:
    enough for twenty beyond the level (20,000 at 1 per 1,000, more for a rarer rate)."""
    if null_windows is None:
        null_windows = max(DEFAULT_NULL_WINDOWS, int(np.ceil(20 * 1000 / false_alarms))) if false_alarms > 0 else 0
        if null_windows > MAX_NULL_WINDOWS:
            raise ConfigError(f"a level of {false_alarms:g} false alarms per 1,000 windows needs {null_windows:,} "
                              f"clean windows drawn; at most {MAX_NULL_WINDOWS:,} are (0.1 per 1,000 or more)",
                              option="false_alarms")
    dim = bundle.feature_dim
    store = bundle.store
    if store.exists:
        version = version or store.version()
        parts = store.segment_parts(version)
        state = store.state(version, dim, parts)
        rows = Samples.concat([part for _, part in parts], dim)
        statistics = state.ridge
    else:
        manifest = bundle.manifest
        rows = Samples.empty(dim)
        if manifest.learning:
            with np.load(bundle.file(manifest.learning), allow_pickle=False) as a:
                rows = Samples(a["features"], a["labels"], a["holdout"], a["keys"])
        head_statistics = getattr(bundle.exported_head, "statistics", None)
        statistics = head_statistics if head_statistics is not None and head_statistics.count else \
            LearnerState.empty(dim, len(manifest.labels)).with_rows(rows).ridge
    reference = DriftReference.from_statistics(statistics, shrinkage)
    held = rows.select(rows.holdout)
    if len(held) >= 2:
        calibration, source = held.features, f"{len(held)} held-out rows"
    else:
        train = rows.select(~rows.holdout)
        calibration, source = train.features, f"{len(train)} training rows (no held-out rows: alarms likelier)"
    return DriftDetector(reference, calibration, source, false_alarms, null_windows, seed)


def score_windows(detector: DriftDetector, features: np.ndarray, labels: list[str], window: int = DEFAULT_WINDOW,
                  unknown_scores: np.ndarray | None = None, unknown_threshold: float | None = None,
                  predicted: np.ndarray | None = None) -> list[WindowScore]:
    """Consecutive windows of ``window`` inputs in order (the last one shorter when the count does not divide),
    each scored against its own size's alarm level.  Class shares are of ``predicted`` (the head's classes) when
    given, else of the nearest class means; the unknown rate is the share of ``unknown_scores`` above
    ``unknown_threshold`` when both are given."""
    if window < 2:
        raise ConfigError(f"must be at least 2, got {window}", option="window")
    residuals = detector.reference.residuals(features)
    classes = residuals.nearest if predicted is None else np.asarray(predicted)
    scores = []
    for index, start in enumerate(range(0, len(residuals), window)):
        stop = min(start + window, len(residuals))
        if stop - start < 2:
            break
        value, alarm, stats = detector.score(residuals.take(slice(start, stop)))
        shares = np.bincount(classes[start:stop], minlength=len(labels)) / (stop - start)
        unknown = None
        if unknown_scores is not None and unknown_threshold is not None:
            unknown = float((np.asarray(unknown_scores[start:stop]) > unknown_threshold).mean())
        scores.append(WindowScore(index, start, stop, value, bool(alarm), stats.distance, stats.shift,
                                  {label: float(s) for label, s in zip(labels, shares) if s > 0}, unknown))
    return scores


@dataclass
class DriftSnapshot:
    """What a :class:`DriftMonitor` reports now (``/metrics`` gauges, the metadata route's ``drift`` object)."""

    inputs: int
    windows: int
    alarms: int
    window: int
    threshold: float
    false_alarms_per_1000: float
    score: float | None = None
    alarm: bool = False
    feature_shift: float | None = None
    spread_ratio: float | None = None
    class_shares: dict[str, float] = field(default_factory=dict)
    unknown_rate: float | None = None
    method: str = METHOD

    def to_json(self) -> dict:
        return asdict(self)


class DriftMonitor:
    """Running drift statistics of a stream in fixed memory, thread-safe.

    Inputs are scored in consecutive windows of ``window`` (tumbling, as ``edgetl-rt drift`` scores a batch, so the
    stated false-alarm rate holds per window).  Held: the current window's residual sums (d + k numbers), distances,
    classes and unknown scores (``window`` each); the last complete window's score and class shares; the
    exponentially weighted feature mean and variance (half-life ``halflife`` inputs), reported as the shift of the
    mean from the training mean (``feature_shift``, in units of the training spread:
    ``|mean_stream - mean_train| / sqrt(sum var_train)``) and the spread (``spread_ratio``:
    ``sqrt(sum var_stream / sum var_train)``, 1 when alike).  ``unknown_threshold``: inputs whose unknown score
    exceeds it count as unknown (the seam for a per-input unknown score; without it no unknown rate is reported).
    """

    def __init__(self, detector: DriftDetector, labels: list[str], window: int = DEFAULT_WINDOW,
                 halflife: float = DEFAULT_HALFLIFE, unknown_threshold: float | None = None):
        if window < 2:
            raise ConfigError(f"must be at least 2, got {window}", option="window")
        if halflife <= 0:
            raise ConfigError(f"must be positive, got {halflife:g}", option="halflife")
        self.detector, self.labels, self.window = detector, list(labels), int(window)
        self.unknown_threshold = unknown_threshold
        self.decay = 0.5 ** (1.0 / halflife)
        reference = detector.reference
        self._lock = threading.Lock()
        self._raw_sum = np.zeros(reference.dim)
        self._proj_sum = np.zeros(reference.basis.shape[1])
        self._distance = np.zeros(self.window)
        self._classes = np.zeros(self.window, np.int64)
        self._nearest = np.zeros(self.window, np.int64)
        self._unknown = np.full(self.window, np.nan)
        self._filled = 0
        self._ew_mean = np.zeros(reference.dim)
        self._ew_var = np.zeros(reference.dim)
        self._ew_weight = 0.0
        self.inputs = self.windows = self.alarms = 0
        self.last: WindowScore | None = None
        self.level = detector.level(self.window)

    @property
    def alarm(self) -> bool:
        """Whether the last complete window was over the alarm level (what an adaptation trigger reads)."""
        last = self.last
        return bool(last is not None and last.alarm)

    def state_bytes(self) -> int:
        """Bytes held for the stream (fixed however many inputs arrive)."""
        return sum(a.nbytes for a in (self._raw_sum, self._proj_sum, self._distance, self._classes, self._nearest,
                                      self._unknown, self._ew_mean, self._ew_var))

    def observe(self, features: np.ndarray, predicted: np.ndarray | None = None,
                unknown_scores: np.ndarray | None = None) -> list[WindowScore]:
        """Take a batch of served inputs (features in the head's input space, the head's classes, optional
        per-input unknown scores); returns the windows it completed."""
        residuals = self.detector.reference.residuals(features)
        classes = residuals.nearest if predicted is None else np.asarray(predicted, np.int64)
        centred = np.asarray(features, np.float64) - self.detector.reference.mean
        unknown = np.full(len(residuals), np.nan) if unknown_scores is None else \
            np.asarray(unknown_scores, np.float64).reshape(-1)
        completed = []
        with self._lock:
            for i in range(len(residuals)):
                self._ew_weight = self.decay * self._ew_weight + 1.0
                step = 1.0 / self._ew_weight
                delta = centred[i] - self._ew_mean
                self._ew_mean += step * delta
                self._ew_var = (1.0 - step) * (self._ew_var + step * delta * delta)
                slot = self._filled
                self._raw_sum += residuals.raw[i]
                self._proj_sum += residuals.proj[i]
                self._distance[slot], self._classes[slot], self._unknown[slot] = \
                    residuals.distance[i], classes[i], unknown[i]
                self._nearest[slot] = residuals.nearest[i]
                self._filled += 1
                self.inputs += 1
                if self._filled == self.window:
                    completed.append(self._close_window())
        return completed

    def _close_window(self) -> WindowScore:
        reference = self.detector.reference
        bias = float(composition_bias(reference, self._nearest, self.detector.unit)[0])
        stats = WindowStatistics(float(self._distance.mean()),
                                 float(reference.norm_sq(self._raw_sum, self._proj_sum)) / self.window - bias,
                                 self.window)
        value = self.level.score(stats)
        alarm = value > self.level.threshold
        shares = np.bincount(self._classes, minlength=len(self.labels)) / self.window
        unknown = None
        if self.unknown_threshold is not None and not np.isnan(self._unknown).any():
            unknown = float((self._unknown > self.unknown_threshold).mean())
        start = self.windows * self.window
        self.last = WindowScore(self.windows, start, start + self.window, value, bool(alarm), stats.distance,
                                stats.shift, {label: float(s) for label, s in zip(self.labels, shares) if s > 0},
                                unknown)
        self.windows += 1
        self.alarms += int(alarm)
        self._filled = 0
        self._raw_sum[:] = 0.0
        self._proj_sum[:] = 0.0
        return self.last

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            last = self.last
            shift = spread = None
            total = float(self.detector.reference.variance.sum())
            if self._ew_weight > 0 and total > 0:
                shift = float(np.linalg.norm(self._ew_mean) / np.sqrt(total))
                spread = float(np.sqrt(self._ew_var.sum() / total))
            return DriftSnapshot(self.inputs, self.windows, self.alarms, self.window, self.level.threshold,
                                 self.detector.false_alarms, None if last is None else last.score,
                                 bool(last and last.alarm), shift, spread,
                                 dict(last.class_shares) if last else {}, None if last is None else last.unknown_rate)
