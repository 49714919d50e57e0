"""Ridge regression kept solved while samples arrive: O(k·d²) for k new samples, numpy only.

The ridge head solves ``(G + αI) W = C`` for the centred Gram matrix ``G`` (d×d) and cross terms ``C``
(d×classes) of every sample learned.  Solving afresh costs O(d³): at d = 1280 on a 2-core Xeon, 35 ms by
LU and 220 ms by eigendecomposition, while adding k samples changes ``G`` by a term of rank k+1 only (their
spread about their own mean, plus the shift of the overall mean).  :class:`RidgeSystem` has two modes:

* dense: ``G`` is held as a matrix and each solve is an LU solve.  Cheapest for one solve, so a
  one-shot ``edgetl-rt update`` process uses it;
* factored (:meth:`RidgeSystem.factorize`): ``G = V diag(λ) Vᵀ + U Uᵀ``, an eigendecomposition taken once
  plus the columns ``U`` added since.  With ``P = (V diag(λ) Vᵀ + αI)⁻¹`` (two products with ``V``),
  Woodbury's identity gives ``W = P C − P U (I + Uᵀ P U)⁻¹ Uᵀ P C``.  ``PU``, ``I + UᵀPU`` and ``PC`` are
  kept up to date, so k new samples cost one product of ``V`` with k+1 columns and a small solve: a few
  milliseconds at d = 1280, where an open learner or ``serve`` needs them.  After ``max_columns``
  columns, or when a solve's residual shows rounding building up, the base is decomposed again.  The
  eigendecomposition also serves the regularisation search, whose candidates then cost O(d²) each.

The maths is exact whatever the mode (no approximation, only rounding): after any sequence of additions,
the solution equals the batch ridge fit on all samples to ~1e-10 relative on real features (tested at
1e-6).  The factored mode measures the relative residual ``‖C − (G + αI) W‖ / ‖C‖`` of every solve
(O(d²·classes)) and reports it.
"""

from __future__ import annotations

import numpy as np

from .heads import RidgeHead, RidgeStatistics, alpha_on_holdout

RESIDUAL_LIMIT = 1e-9      # a factored solve less accurate than this is redone on a fresh decomposition


class RidgeSystem:
    """The centred ridge statistics of every sample learned, dense or factored (see the module docstring)."""

    def __init__(self, count: int, mean_x: np.ndarray, mean_y: np.ndarray, cross: np.ndarray, gram: np.ndarray,
                 max_columns: int = 256):
        self.count = int(count)
        self.mean_x, self.mean_y, self.cross = mean_x, mean_y, cross      # (d,), (C,), (d, C), float64
        self.gram: np.ndarray | None = gram                               # dense mode: centred Gram (d, d)
        self.max_columns = max_columns
        self.basis: np.ndarray | None = None                              # factored mode: V, λ and U
        self.spectrum: np.ndarray | None = None
        self.columns = np.zeros((len(mean_x), 0))
        self._alpha: float | None = None                                  # the α that P·U, S and P·C are for
        self.residual: float | None = None                                # of the last factored solve
        self.rebases = 0

    @classmethod
    def from_statistics(cls, statistics: RidgeStatistics, max_columns: int = 256) -> "RidgeSystem":
        dim, num_classes = statistics.cross.shape
        if statistics.count == 0:
            return cls(0, np.zeros(dim), np.zeros(num_classes), np.zeros((dim, num_classes)), np.zeros((dim, dim)),
                       max_columns)
        gram, cross, mean_x, mean_y = statistics.centred()
        return cls(statistics.count, mean_x, mean_y, cross, gram, max_columns)

    @property
    def dim(self) -> int:
        return len(self.mean_x)

    @property
    def factored(self) -> bool:
        return self.basis is not None

    def grow(self, num_classes: int) -> None:
        """Add zero columns for new classes (an old sample's target for a new class is exactly 0)."""
        extra = num_classes - len(self.mean_y)
        if extra > 0:
            self.mean_y = np.concatenate([self.mean_y, np.zeros(extra)])
            self.cross = np.hstack([self.cross, np.zeros((self.dim, extra))])
            if self._alpha is not None:
                self._pc = np.hstack([self._pc, np.zeros((self.dim, extra))])

    def add(self, x: np.ndarray, targets: np.ndarray) -> None:
        """Learn rows ``x`` (k, d) with targets (k, C): a rank-(k+1) change of the centred statistics."""
        k = len(x)
        if k == 0:
            return
        x, targets = np.asarray(x, np.float64), np.asarray(targets, np.float64)
        mean_xb, mean_yb = x.mean(axis=0), targets.mean(axis=0)
        left, right = [], []
        if k > 1:
            left.append((x - mean_xb).T)
            right.append((targets - mean_yb).T)
        if self.count:
            scale = np.sqrt(self.count * k / (self.count + k))
            left.append(scale * (mean_xb - self.mean_x)[:, None])
            right.append(scale * (mean_yb - self.mean_y)[:, None])
        share = k / (self.count + k)
        self.mean_x = self.mean_x + share * (mean_xb - self.mean_x)
        self.mean_y = self.mean_y + share * (mean_yb - self.mean_y)
        self.count += k
        if not left:
            return
        u, v = np.hstack(left), np.hstack(right)          # G += u uᵀ and C += u vᵀ
        self.cross += u @ v.T
        if self.gram is not None:
            self.gram += u @ u.T
        elif self.columns.shape[1] + u.shape[1] > self.max_columns:
            self._rebase(u)
        else:
            self._extend(u, v)

    # --- factored mode ------------------------------------------------------------------------------------------

    def factorize(self) -> None:
        """Switch to factored mode (one eigendecomposition, O(d³)); later additions cost O(k·d²)."""
        if self.gram is not None:
            gram, self.gram = self.gram, None
            self._decompose(gram)

    def _decompose(self, gram: np.ndarray) -> None:
        spectrum, self.basis = np.linalg.eigh(gram)
        self.spectrum = np.maximum(spectrum, 0.0)           # G is PSD; clip rounding below zero
        self.columns = np.zeros((self.dim, 0))
        self._alpha = None

    def _rebase(self, extra: np.ndarray | None = None) -> None:
        gram = (self.basis * self.spectrum) @ self.basis.T + self.columns @ self.columns.T
        if extra is not None:
            gram += extra @ extra.T
        self._decompose(gram)
        self.rebases += 1

    def _apply_inverse(self, b: np.ndarray, alpha: float) -> np.ndarray:
        """``(V diag(λ) Vᵀ + αI)⁻¹ b``."""
        return self.basis @ ((self.basis.T @ b) / (self.spectrum + alpha)[:, None])

    def _prepare(self, alpha: float) -> None:
        if self._alpha != alpha:
            self._pu = self._apply_inverse(self.columns, alpha)
            self._capacitance = np.eye(self.columns.shape[1]) + self.columns.T @ self._pu
            self._pc = self._apply_inverse(self.cross, alpha)
            self._alpha = alpha

    def _extend(self, u: np.ndarray, v: np.ndarray) -> None:
        if self._alpha is not None:
            pu = self._apply_inverse(u, self._alpha)
            side = self.columns.T @ pu
            self._capacitance = np.block([[self._capacitance, side], [side.T, np.eye(u.shape[1]) + u.T @ pu]])
            self._pu = np.hstack([self._pu, pu])
            self._pc += pu @ v.T
        self.columns = np.hstack([self.columns, u])

    def _factored_solve(self, alpha: float) -> np.ndarray:
        self._prepare(alpha)
        weight = self._pc
        if self.columns.shape[1]:
            weight = weight - self._pu @ np.linalg.solve(self._capacitance, self.columns.T @ self._pc)
        product = self.basis @ ((self.spectrum + alpha)[:, None] * (self.basis.T @ weight))
        product += self.columns @ (self.columns.T @ weight)
        self.residual = float(np.linalg.norm(self.cross - product) / max(np.linalg.norm(self.cross), 1e-300))
        return weight

    # --- solving ------------------------------------------------------------------------------------------------

    def weights(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W (d, C), bias (C,))`` of the ridge fit at ``alpha`` (the intercept is not penalised)."""
        if self.count == 0:
            raise ValueError("ridge has no samples to fit")
        if self.factored:
            weight = self._factored_solve(alpha)
            if self.residual > RESIDUAL_LIMIT:
                self._rebase()
                weight = self._factored_solve(alpha)
        else:
            weight = np.linalg.solve(self.gram + alpha * np.eye(self.dim), self.cross)
        return weight, self.mean_y - self.mean_x @ weight

    def head(self, alpha: float) -> RidgeHead:
        weight, bias = self.weights(alpha)
        return RidgeHead(weight.T.astype(np.float32), bias.astype(np.float32), None, float(alpha))

    def default_alpha(self) -> float:
        """The grid's centre (the mean feature variance times n), used before any held-out choice."""
        trace = float(np.trace(self.gram)) if self.gram is not None else \
            float(self.spectrum.sum() + np.einsum("ij,ij->", self.columns, self.columns))
        return max(trace / self.dim, 1e-12)

    def select_alpha(self, holdout_x: np.ndarray | None, holdout_y: np.ndarray | None) -> float:
        """The grid's best alpha on held-out samples; the system is factored afresh (O(d³)) on the way."""
        if self.gram is not None:
            self.factorize()
        elif self.columns.shape[1]:
            self._rebase()
        return alpha_on_holdout(self.spectrum, self.basis, self.cross, self.mean_x, self.mean_y, holdout_x,
                                holdout_y)

    def feature_variance(self) -> np.ndarray:
        """Per-feature variance of the samples learned (``diag G / n``)."""
        diag = np.diag(self.gram) if self.gram is not None else \
            np.einsum("ij,j,ij->i", self.basis, self.spectrum, self.basis) + np.einsum("ij,ij->i", self.columns,
                                                                                        self.columns)
        return diag / max(self.count, 1)
