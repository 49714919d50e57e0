"""How well a frozen backbone's features suit a labelled data set, computed on cached features in seconds.

Two scores, both on the *training* split only (the validation split stays for judging the fine-tuned model):

- **LogME** (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model from features to each
  one-hot class column, maximised over its prior and noise precisions, averaged over classes and divided by
  the sample count.  Higher is better; it needs no training and no hyper-parameter.
- **k-fold probe accuracy**: a ridge classifier on the features as they are (one-hot targets; pooled
  activations are non-negative, so their mean direction carries the offset an intercept would), stratified
  k-fold, mean and spread of the fold accuracies.  Ridge is a linear smoother, so the predictions of the model
  fitted without fold k are exact from the full fit: ``y_k - (I - H_kk)^-1 (y_k - yhat_k)`` with the hat
  matrix ``H = U diag(s / (s + alpha)) U'``.  The eigendecomposition LogME needs serves every fold and every
  candidate penalty, so both scores cost one decomposition.

Both are written here in numpy (a few dozen lines) rather than taken from a library: scikit-learn has no
LogME, and the exact fold-out formula makes the probe one decomposition instead of k fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Ridge penalties tried by the probe, relative to the mean eigenvalue of X'X (its trace over the dimension).
ALPHA_GRID = tuple(10.0 ** k for k in range(-4, 3))


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nonzero eigenvalues of X'X, X's left singular vectors U), from the smaller of X'X and XX'."""
    n, d = x.shape
    values, vectors = np.linalg.eigh(x @ x.T if n <= d else x.T @ x)
    values = np.clip(values, 0.0, None)
    keep = values > values.max() * 1e-12
    values, vectors = values[keep], vectors[:, keep]
    return values, vectors if n <= d else (x @ vectors) / np.sqrt(values)


class Spectrum:
    """The eigendecomposition of X'X (from the smaller Gram matrix) that both scores are computed from."""

    def __init__(self, features: np.ndarray):
        x = np.asarray(features, dtype=np.float64)
        self.n, self.dim = x.shape
        self.sigma, self.u = _spectrum(x)


def logme(features: np.ndarray | Spectrum, labels: np.ndarray) -> float:
    """Mean over classes of the maximised log evidence per sample (higher: features more transferable)."""
    spectrum = features if isinstance(features, Spectrum) else Spectrum(features)
    evidences = [class_evidence(spectrum.sigma, spectrum.u, (labels == label).astype(np.float64), spectrum.dim)[0]
                 for label in np.unique(labels)]
    return float(np.mean(evidences)) / spectrum.n


def class_evidence(sigma: np.ndarray, u: np.ndarray, y: np.ndarray, dim: int,
                   max_iterations: int = 50) -> tuple[float, float, float]:
    """(log evidence, alpha, beta) of y ~ N(Xw, 1/beta), w ~ N(0, 1/alpha), at the fixed point of MacKay's
    updates; ``sigma``, ``u``: the nonzero eigenvalues of X'X and X's left singular vectors."""
    n = len(y)
    zeros = dim - len(sigma)           # directions the data does not span: they add log(alpha) each
    proj2 = sigma * (u.T @ y) ** 2     # (V'X'y)^2: the target in the eigenbasis
    yy = float(y @ y)

    def moments(lam: float) -> tuple[float, float, float]:
        gamma = float(np.sum(sigma / (sigma + lam)))                  # effective number of parameters
        m2 = float(np.sum(proj2 / (sigma + lam) ** 2))                # |posterior mean|^2
        residual = max(yy - float(np.sum(proj2 * (sigma + 2 * lam) / (sigma + lam) ** 2)), 1e-12)
        return gamma, m2, residual

    alpha, beta = 1.0, 1.0
    for _ in range(max_iterations):
        lam = alpha / beta
        gamma, m2, residual = moments(lam)
        alpha, beta = gamma / max(m2, 1e-12), max(n - gamma, 1e-12) / residual
        if abs(alpha / beta - lam) / lam < 1e-6:
            break
    _, m2, residual = moments(alpha / beta)
    evidence = (dim / 2 * np.log(alpha) + n / 2 * np.log(beta)
                - 0.5 * (np.sum(np.log(alpha + beta * sigma)) + zeros * np.log(alpha))
                - beta / 2 * residual - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence), float(alpha), float(beta)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint index sets covering every sample, each class spread evenly (seeded)."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        for i, index in enumerate(members):
            folds[(offset + i) % k].append(int(index))
        offset += len(members)   # the next class starts where this one stopped: folds stay balanced in size
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds if f]


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float           # mean over folds
    std: float                # spread over folds
    folds: int
    alpha: float              # the ridge penalty chosen by leave-one-out accuracy


def ridge_probe(features: np.ndarray | Spectrum, labels: np.ndarray, k: int = 5, seed: int = 0) -> ProbeScore:
    """Stratified k-fold accuracy of a ridge classifier, each fold's prediction exact from one decomposition."""
    spectrum = features if isinstance(features, Spectrum) else Spectrum(features)
    sigma, u, n = spectrum.sigma, spectrum.u, spectrum.n
    classes = np.unique(labels)
    y = (labels[:, None] == classes[None, :]).astype(np.float64)
    k = max(2, min(k, int(np.bincount(np.searchsorted(classes, labels)).min()), n // 2))
    uty = u.T @ y
    scale = float(sigma.sum()) / spectrum.dim
    best: tuple[float, float] = (-1.0, scale)
    for factor in ALPHA_GRID:      # leave-one-out accuracy picks the penalty: only the hat matrix's diagonal
        alpha = scale * factor
        shrink = sigma / (sigma + alpha)
        fitted = u @ (shrink[:, None] * uty)
        leverage = np.einsum("ij,j,ij->i", u, shrink, u)
        loo = y - (y - fitted) / (1.0 - leverage)[:, None]
        accuracy = float(np.mean(classes[np.argmax(loo, axis=1)] == labels))
        if accuracy > best[0] + 1e-12:
            best = (accuracy, alpha)
    alpha = best[1]
    shrink = sigma / (sigma + alpha)
    fitted = u @ (shrink[:, None] * uty)
    accuracies = []
    for fold in stratified_folds(labels, k, seed):
        hat = (u[fold] * shrink) @ u[fold].T
        held_out = y[fold] - np.linalg.solve(np.eye(len(fold)) - hat, y[fold] - fitted[fold])
        accuracies.append(float(np.mean(classes[np.argmax(held_out, axis=1)] == labels[fold])))
    return ProbeScore(float(np.mean(accuracies)), float(np.std(accuracies)), len(accuracies), alpha)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two scorings of the same items (1: same order, -1: reversed; ties shrink it)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = np.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return float((concordant - discordant) / denominator) if denominator else float("nan")


__all__ = ["ProbeScore", "Spectrum", "class_evidence", "logme", "ridge_probe", "kendall_tau", "stratified_folds"]
