"""Label-free adaptation on frozen features, and the label-free check that guards it (``edgetl-rt adapt``, ``serve
--adapt-on-drift``).

Every method fits on unlabelled target features and the source statistics the store already keeps (the ridge
sums: feature mean, Gram matrix, class sums); none needs a label or a gradient through the backbone, so each runs
on the device in numpy:

* ``normalise``: each feature moved from the target's mean and spread onto the source's (the 0.x ``adapt``);
* ``coral``: full covariance alignment in the spirit of CORAL (Sun et al. 2016): target features whitened with
  the target covariance and re-coloured with the source's, both shrunk towards their mean variance (a few hundred
  target rows cannot fill a 1280 x 1280 covariance);
* ``prototypes``: the head's class directions moved towards the target's confident rows, in the spirit of T3A
  (Iwasawa & Matsuo 2021): each class keeps its source direction plus the ``per_class`` lowest-entropy target
  features the source head assigns to it; the head becomes the cosine classifier of those prototypes;
* ``lame``: output smoothing over a batch in the spirit of LAME (Boudiaf et al. 2022): each input's class
  probabilities are pulled towards those of its nearest neighbours in the batch. It changes no stored state and
  is measured by ``benchmarks/adaptation.py`` only: nothing commits or serves it yet.

:func:`verdict` says whether an adaptation helped without labels: the information its outputs carry
(mean confidence and class balance: the mutual information between input and class), the agreement with the
unadapted head (low agreement is how collapse shows), and how far the features sit from the source statistics
(a drift score: :func:`feature_drift` by default; any callable of the features fits the ``drift`` seam, such as
the serving drift monitor's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..bundle.heads import Head, LinearHead, RidgeStatistics, normalise_rows
from ..errors import ConfigError, DataError
from ..inference.features import apply_adapter
from .settings import ADAPT_METHODS

#: Methods that commit a version (``lame`` smooths a batch's outputs and commits nothing).
METHODS = ADAPT_METHODS
#: A drift score of a feature batch against the source (lower: closer); the seam to a serving drift monitor.
DriftScore = Callable[[np.ndarray], float]


@dataclass
class SourceStatistics:
    """What the head learned from, as the store's ridge statistics give it (float64)."""

    mean: np.ndarray            # (d,)
    covariance: np.ndarray      # (d, d)
    count: int

    @classmethod
    def from_ridge(cls, ridge: RidgeStatistics) -> SourceStatistics:
        if ridge.count < 2:
            raise ConfigError("the store has no source statistics to adapt to (the bundle ships no learning data)")
        mean = ridge.feature_sum / ridge.count
        return cls(mean, ridge.gram / ridge.count - np.outer(mean, mean), ridge.count)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(np.diag(self.covariance), 0.0)

    def root(self, shrink: float) -> np.ndarray:
        """The shrunk covariance's square root (CORAL's re-colouring), computed once per ``shrink``."""
        roots = self.__dict__.setdefault("_roots", {})
        if shrink not in roots:
            roots[shrink] = _power(self.covariance, shrink, 0.5)
        return roots[shrink]


def fit_normalise(source: SourceStatistics, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-feature mean and spread of the target onto the source's."""
    target = np.asarray(target, np.float64)
    target_mean, target_std = target.mean(axis=0), target.std(axis=0)
    scale = np.where(target_std > 1e-6, np.sqrt(source.variance) / np.maximum(target_std, 1e-6), 1.0)
    return {"target_mean": target_mean.astype(np.float32), "scale": scale.astype(np.float32),
            "source_mean": source.mean.astype(np.float32)}


def _power(covariance: np.ndarray, shrink: float, power: float) -> np.ndarray:
    """``(C + shrink * mean variance * I) ** power`` by eigendecomposition (symmetric, positive definite)."""
    dim = covariance.shape[0]
    ridge = shrink * max(float(np.trace(covariance)) / dim, 1e-12)
    values, vectors = np.linalg.eigh(covariance + ridge * np.eye(dim))
    return (vectors * np.maximum(values, 1e-12) ** power) @ vectors.T


def fit_coral(source: SourceStatistics, target: np.ndarray, shrink: float = 1.0) -> dict[str, np.ndarray]:
    """Full covariance alignment: ``(x - target mean) @ Ct^-1/2 Cs^1/2 + source mean``, both covariances shrunk
    by ``shrink`` times their mean variance."""
    target = np.asarray(target, np.float64)
    target_mean = target.mean(axis=0)
    centred = target - target_mean
    matrix = _power(centred.T @ centred / len(target), shrink, -0.5) @ source.root(shrink)
    return {"target_mean": target_mean.astype(np.float32), "matrix": matrix.astype(np.float32),
            "source_mean": source.mean.astype(np.float32)}


#: Logits are divided by their spread over the batch and multiplied by this before a softmax: a ridge head's
#: outputs are regression values near 0 and 1, whose softmax is nearly flat, and heads differ in scale, so
#: confidence, entropy and information are compared on standardised logits.
SPREAD = 3.0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from standardised logits (:data:`SPREAD`)."""
    z = np.asarray(logits, np.float64)
    z = z * (SPREAD / max(float(z.std()), 1e-12))
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    return -(probabilities * np.log(np.maximum(probabilities, 1e-12))).sum(axis=1)


PROTOTYPE_SCALE = 16.0      # cosine logits times this, as the NCM head does, so softmax scores are usable


def fit_prototypes(head: Head, target: np.ndarray, per_class: int = 20) -> LinearHead:
    """A cosine classifier whose class prototypes are the head's class directions plus the ``per_class`` most
    confident target features the head assigns to each class (all L2-normalised, then averaged)."""
    target = np.asarray(target, np.float32)
    probabilities = softmax(head.logits(target))
    guess, entropy = probabilities.argmax(axis=1), _entropy(probabilities)
    directions = _class_directions(head, target)
    unit = normalise_rows(target.astype(np.float64))
    prototypes = np.empty_like(directions)
    for c in range(head.num_classes):
        rows = np.flatnonzero(guess == c)
        rows = rows[np.argsort(entropy[rows], kind="stable")[:per_class]]
        prototypes[c] = (directions[c] + unit[rows].sum(axis=0)) / (1 + len(rows))
    weight = PROTOTYPE_SCALE * normalise_rows(prototypes)
    # a cosine classifier as a linear head: the rows are unit-scaled, so logits are scaled cosines up to the
    # input's norm, which is the same for every class and changes no decision; the bias stays 0
    return LinearHead(weight.astype(np.float32), np.zeros(head.num_classes, np.float32))


def _class_directions(head: Head, target: np.ndarray) -> np.ndarray:
    """Unit vectors the head scores each class by: a linear head's rows; otherwise the mean of the target rows it
    assigns to the class (a source-free stand-in)."""
    if isinstance(head, LinearHead):
        return normalise_rows(np.asarray(head.weight, np.float64))
    guess = head.logits(target).argmax(axis=1)
    unit = normalise_rows(target.astype(np.float64))
    means = np.stack([unit[guess == c].mean(axis=0) if np.any(guess == c) else np.zeros(unit.shape[1])
                      for c in range(head.num_classes)])
    return normalise_rows(means)


def lame(logits: np.ndarray, features: np.ndarray, neighbours: int = 5, steps: int = 10) -> np.ndarray:
    """Class probabilities of a batch smoothed over its k-nearest-neighbour graph (cosine), LAME's fixed point
    ``y = p * exp(W y)`` normalised, from the head's own probabilities ``p``."""
    prior = softmax(logits)
    n = len(prior)
    if n <= neighbours:
        return prior
    unit = normalise_rows(np.asarray(features, np.float64))
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argpartition(-similarity, neighbours, axis=1)[:, :neighbours]
    affinity = np.zeros((n, n))
    affinity[np.repeat(np.arange(n), neighbours), nearest.ravel()] = 1.0
    affinity = (affinity + affinity.T) / 2
    smoothed = prior
    for _ in range(steps):
        smoothed = prior * np.exp(affinity @ smoothed)
        smoothed /= smoothed.sum(axis=1, keepdims=True)
    return smoothed


def feature_drift(source: SourceStatistics) -> DriftScore:
    """The default drift score: the distance of a batch's feature mean from the source mean, per feature in
    source standard deviations, root-mean-squared over the features."""
    scale = 1.0 / np.sqrt(np.maximum(source.variance, 1e-12))

    def score(features: np.ndarray) -> float:
        gap = (np.asarray(features, np.float64).mean(axis=0) - source.mean) * scale
        return float(np.sqrt(np.mean(gap ** 2)))

    return score


def information(logits: np.ndarray) -> float:
    """Mutual information between input and predicted class over a batch: the entropy of the mean prediction
    (classes used evenly) less the mean entropy (each prediction confident); it falls when a method collapses
    onto few classes or blurs every output."""
    probabilities = softmax(logits)
    mean = probabilities.mean(axis=0, keepdims=True)
    return float(_entropy(mean)[0] - _entropy(probabilities).mean())


def agreement(before: np.ndarray, after: np.ndarray) -> float:
    """Share of inputs whose top class two sets of logits agree on."""
    return float(np.mean(np.argmax(before, axis=1) == np.argmax(after, axis=1))) if len(before) else 1.0


#: The label-free guard's defaults: an adaptation must keep at least ``MIN_AGREEMENT`` of the unadapted head's
#: answers (collapse shows as answers changing en masse), keep the predicted classes at least ``MIN_BALANCE`` as
#: evenly used as before (collapse onto few classes), and bring the features no further from the source (drift
#: score); and there must be a shift to adapt to: a drift score above the alarm level.
MIN_AGREEMENT = 0.5
MIN_BALANCE = 0.8
#: The default alarm level of :func:`feature_drift`, in units of its value on a batch drawn from the source itself
#: (about ``1 / sqrt(n)`` for ``n`` rows: the sampling noise of a batch mean). A clean val split sits about 3 such
#: units from its train split (clothing10: 0.163 for 372 photos); at 4 units mild JPEG and brightness shifts, on
#: which the head barely lost, were adapted and lost up to 4 points; 6 leaves them alone
#: (benchmarks/adaptation.py).
ALARM_NOISE_MULTIPLE = 6.0
#: What ``auto`` tries, in order of preference, per modality (chosen by measurement: benchmarks/adaptation.py); the
#: first that passes the guard is committed. On images (clothing10, six corruptions) the prototypes after
#: normalisation gained most; on texts (banking77, 77 intents) prototypes lost points, normalisation alone did not.
AUTO = ("normalise+prototypes", "normalise")
AUTO_BY_MODALITY = {"image": AUTO, "text": ("normalise",)}
#: The seed of the guard's split (:func:`halves`), and the fewest target rows it needs: two per half.
SPLIT_SEED = 0
MIN_ROWS = 4


@dataclass
class Candidate:
    """One method fitted to a target batch, and its label-free signals on that batch."""

    method: str
    adapter: dict[str, np.ndarray] | None
    head: Head
    information: float = 0.0
    agreement: float = 1.0
    balance: float = 1.0
    drift: float | None = None

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.head.logits(apply_adapter(features, self.adapter))

    def signals(self) -> dict:
        out = {"information": self.information, "agreement": self.agreement, "balance": self.balance,
               "drift": self.drift}
        return {k: round(float(v), 6) for k, v in out.items() if v is not None}


@dataclass
class Choice:
    """What :func:`choose` decided: the candidate that passed the label-free guard (``helped``), or why none did."""

    best: Candidate | None
    helped: bool
    reason: str
    drift_before: float
    alarm: float
    information_before: float
    candidates: list[Candidate]
    forced: bool = False                # the guard objected and ``force`` took the method anyway

    @property
    def method(self) -> str | None:
        return self.best.method if self.best is not None else None


def fit(method: str, head: Head, source: SourceStatistics, target: np.ndarray) -> tuple[dict | None, Head]:
    """The adapter and head of ``method`` fitted on the ``target`` features (raw backbone output)."""
    if method == "normalise":
        return fit_normalise(source, target), head
    if method == "coral":
        return fit_coral(source, target), head
    if method == "prototypes":
        return None, fit_prototypes(head, target)
    if method == "normalise+prototypes":
        adapter = fit_normalise(source, target)
        return adapter, fit_prototypes(head, apply_adapter(target, adapter))
    raise ConfigError(f"unknown adaptation method {method!r}: one of auto, {', '.join(METHODS)}", option="method")


def class_balance(logits: np.ndarray) -> float:
    """Entropy of the predicted class shares over the batch, as a share of the most even (log C)."""
    counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1]).astype(np.float64)
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum() / max(np.log(logits.shape[1]), 1e-12))


def default_alarm(n: int) -> float:
    """:func:`feature_drift`'s alarm level for a batch of ``n`` rows."""
    return ALARM_NOISE_MULTIPLE / np.sqrt(max(n, 1))


def signals(candidate: Candidate, reference_logits: np.ndarray, features: np.ndarray, score: DriftScore) -> Candidate:
    logits = candidate.head.logits(apply_adapter(features, candidate.adapter))
    candidate.information, candidate.agreement = information(logits), agreement(reference_logits, logits)
    candidate.balance = class_balance(logits)
    candidate.drift = score(apply_adapter(features, candidate.adapter))
    return candidate


def verdict(candidate: Candidate, reference: Candidate, min_agreement: float = MIN_AGREEMENT,
            min_balance: float = MIN_BALANCE) -> str | None:
    """Why ``candidate`` fails the label-free guard against ``reference`` (both with their signals), or None."""
    if candidate.agreement < min_agreement:
        return f"{candidate.method} changes {1 - candidate.agreement:.0%} of the answers (at most " \
               f"{1 - min_agreement:.0%})"
    if candidate.balance < min_balance * reference.balance:
        return f"{candidate.method} crowds the answers into fewer classes (balance {candidate.balance:.3f} from " \
               f"{reference.balance:.3f})"
    if candidate.drift is not None and reference.drift is not None and candidate.drift > reference.drift + 1e-9:
        return f"{candidate.method} moves the features away from the source (drift {reference.drift:.3f} -> " \
               f"{candidate.drift:.3f})"
    return None


def halves(n: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The guard's seeded split of ``n`` target rows: the rows the adapters are fitted on, and the rows they are
    judged on (each in their original order)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n // 2]), np.sort(order[n // 2:])


def choose(head: Head, source: SourceStatistics, target: np.ndarray, methods: tuple[str, ...] = AUTO,
           reference: Candidate | None = None, drift: DriftScore | None = None, alarm: float | None = None,
           min_agreement: float = MIN_AGREEMENT, min_balance: float = MIN_BALANCE, force: bool = False) -> Choice:
    """Fit ``methods`` on ``target`` in order and take the first that passes the label-free guard (:func:`verdict`)
    against ``reference`` (what is served now: ``head`` on the raw features unless given). Nothing is taken when
    the drift score of the target is below ``alarm`` (no shift to adapt to); ``force`` takes the first method
    whatever the guard says. ``drift`` is the seam for another drift score (its own ``alarm`` with it); the
    default is :func:`feature_drift` with :func:`default_alarm`.

    The guard judges out of sample: each method is fitted on one seeded half of the rows (:func:`halves`) and its
    signals are measured on the other half, so an adapter that only fits the rows it saw (``normalise`` moves
    exactly its own rows' mean onto the source's) can fail the drift check. The method taken is then fitted again
    on every row; the signals reported are the held-out ones that decided."""
    target = np.asarray(target, np.float32)
    if len(target) < MIN_ROWS:
        raise DataError(f"adapting needs at least {MIN_ROWS} unlabelled inputs (half to fit on, half to check "
                        f"on), got {len(target)}")
    score = drift if drift is not None else feature_drift(source)
    alarm = alarm if alarm is not None else (default_alarm(len(target)) if drift is None else 0.0)
    fit_rows, check_rows = halves(len(target))
    fitted_on, checked_on = target[fit_rows], target[check_rows]
    reference = reference or Candidate("none", None, head)
    before = reference.logits(checked_on)
    reference = signals(reference, before, checked_on, score)
    candidates = []
    raw_drift = score(target)
    common = {"drift_before": raw_drift, "alarm": alarm, "information_before": reference.information}
    quiet = raw_drift < alarm
    if quiet and not force:
        return Choice(None, False, f"no shift to adapt to: drift score {raw_drift:.4f} below the alarm level "
                      f"{alarm:.4f}", candidates=candidates, **common)
    reasons = []
    for method in methods:
        adapter, adapted_head = fit(method, head, source, fitted_on)
        candidate = signals(Candidate(method, adapter, adapted_head), before, checked_on, score)
        candidates.append(candidate)
        why = verdict(candidate, reference, min_agreement, min_balance)
        if why is None or force:
            adapter, adapted_head = fit(method, head, source, target)       # taken: fitted on every row
            best = Candidate(method, adapter, adapted_head, candidate.information, candidate.agreement,
                             candidate.balance, candidate.drift)
            return Choice(best, True, why or f"{method} keeps {candidate.agreement:.1%} of the held-out answers "
                          f"and brings their drift score from {reference.drift:.4f} to {candidate.drift:.4f}",
                          candidates=candidates, forced=why is not None or quiet, **common)
        reasons.append(why)
    return Choice(None, False, "; ".join(reasons), candidates=candidates, **common)
