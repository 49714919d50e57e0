"""Ridge regression kept solved while samples arrive: O(k·d²) for k new samples, numpy only.

The ridge head solves ``(G + αI) W = C`` for the centred Gram matrix ``G`` (d×d) and cross terms ``C``
(d×classes) of every sample learned.  Solving afresh costs O(d³): at d = 1280 on a 2-core Xeon, 35 ms by
LU and 220 ms by eigendecomposition, while adding k samples changes ``G`` by a term of rank k+1 only (their
spread about their own mean, plus the shift of the overall mean).  :class:`RidgeSystem` has two modes:

* dense: ``G`` is held as a matrix and each solve is an LU solve.  Cheapest for one solve, so a
  one-shot ``edgetl-rt update`` process uses it;
* factored (:meth:`RidgeSystem.factorize`): ``G = V diag(λ) Vᵀ + U Uᵀ``, an eigendecomposition taken once
  plus the columns ``U`` added since, all held in the eigenbasis (``Û = VᵀU``, ``Ĉ = VᵀC``).  There, with
  ``D = (diag(λ) + αI)⁻¹``, Woodbury's identity gives ``Ŵ = D Ĉ − D Û (I + Ûᵀ D Û)⁻¹ Ûᵀ D Ĉ`` and
  ``W = V Ŵ``: k new samples cost one product of ``Vᵀ`` with their k+1 columns, one of ``V`` with the
  classes' columns, O(d·m·C) and the m×m solve (O(m³), m ≤ ``max_columns``) besides: a few milliseconds at
  d = 1280, where an open learner or ``serve`` needs them.  After ``max_columns`` columns, or when a solve's
  residual shows rounding building up, the columns are folded into the eigendecomposition (rebase, O(d³):
  about 0.25 s at d = 1280, once per 256 one-image updates, on the update that crosses the limit).  The
  eigendecomposition also serves the regularisation search, whose candidates then cost O(d²) each.

The maths is exact whatever the mode (no approximation, only rounding): after any sequence of additions,
the solution equals the batch ridge fit on all samples to ~1e-10 relative on real features (tested at
1e-6).  The factored mode measures the relative residual ``‖Ĉ − (diag(λ) + Û Ûᵀ + αI) Ŵ‖ / ‖Ĉ‖`` of every
solve (in the eigenbasis, so O(d·m·C)) and reports it.
"""

from __future__ import annotations

import numpy as np

from ..bundle.heads import RidgeHead, RidgeStatistics, alpha_on_holdout, alpha_scale
from ..errors import ConfigError

#: A factored solve whose relative residual exceeds this is redone on a fresh decomposition.  It is a check on
#: rounding building up in the Woodbury terms (fresh solves sit at ~1e-15), not a bound on the weights' error,
#: which may be up to the condition number (λmax + α) / α times larger.
RESIDUAL_LIMIT = 1e-9


class RidgeSystem:
    """The centred ridge statistics of every sample learned, dense or factored (see the module docstring)."""

    def __init__(self, count: int, mean_x: np.ndarray, mean_y: np.ndarray, cross: np.ndarray, gram: np.ndarray,
                 max_columns: int = 256):
        self.count = int(count)
        self.mean_x, self.mean_y, self.cross = mean_x, mean_y, cross      # (d,), (C,), (d, C), float64
        self.gram: np.ndarray | None = gram                               # dense mode: centred Gram (d, d)
        self.max_columns = max_columns
        self.basis: np.ndarray | None = None                              # factored mode: V, λ, Û = VᵀU, Ĉ = VᵀC
        self.spectrum: np.ndarray | None = None
        self.columns = np.zeros((len(mean_x), 0))
        self._cross_hat: np.ndarray | None = None
        self._alpha: float | None = None                                  # the α that D = (λ+α)⁻¹, D·Û, S are for
        self.residual: float | None = None                                # of the last factored solve
        self.rebases = 0

    @classmethod
    def from_statistics(cls, statistics: RidgeStatistics, max_columns: int = 256) -> RidgeSystem:
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
            if self._cross_hat is not None:
                self._cross_hat = np.hstack([self._cross_hat, np.zeros((self.dim, extra))])

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
        else:
            self._extend(self.basis.T @ u, v)

    # --- factored mode ------------------------------------------------------------------------------------------
    # Everything is kept in the eigenbasis: Û = Vᵀ U, Ĉ = Vᵀ C, so that G = V (diag(λ) + Û Ûᵀ) Vᵀ and a solve
    # touches V twice only (Vᵀ u for new columns, V Ŵ for the weights); the rest is O(d·m·C).

    def factorize(self) -> None:
        """Switch to factored mode (one eigendecomposition, O(d³)); later additions cost O(k·d²)."""
        if self.gram is not None:
            gram, self.gram = self.gram, None
            spectrum, self.basis = np.linalg.eigh(gram)
            self._set_spectrum(spectrum, self.basis.T @ self.cross)

    def _set_spectrum(self, spectrum: np.ndarray, cross_hat: np.ndarray) -> None:
        self.spectrum = np.maximum(spectrum, 0.0)           # G is PSD; clip rounding below zero
        self.columns = np.zeros((self.dim, 0))
        self._cross_hat = cross_hat
        self._alpha = None

    def _rebase(self) -> None:
        """Fold the columns into the eigendecomposition: eig(diag(λ) + Û Ûᵀ) = Q Λ Qᵀ, then V ← V Q."""
        inner = np.diag(self.spectrum) + self.columns @ self.columns.T
        spectrum, rotation = np.linalg.eigh(inner)
        self.basis = self.basis @ rotation
        self._set_spectrum(spectrum, rotation.T @ self._cross_hat)
        self.rebases += 1

    def _prepare(self, alpha: float) -> None:
        if self._alpha != alpha:
            self._scale = 1.0 / (self.spectrum + alpha)
            self._scaled_columns = self._scale[:, None] * self.columns
            self._capacitance = np.eye(self.columns.shape[1]) + self.columns.T @ self._scaled_columns
            self._alpha = alpha

    def _extend(self, columns_hat: np.ndarray, v: np.ndarray) -> None:
        self._cross_hat += columns_hat @ v.T
        if self.columns.shape[1] + columns_hat.shape[1] > self.max_columns:
            self.columns = np.hstack([self.columns, columns_hat])
            self._rebase()
            return
        if self._alpha is not None:
            scaled = self._scale[:, None] * columns_hat
            side = self.columns.T @ scaled
            self._capacitance = np.block([[self._capacitance, side],
                                          [side.T, np.eye(columns_hat.shape[1]) + columns_hat.T @ scaled]])
            self._scaled_columns = np.hstack([self._scaled_columns, scaled])
        self.columns = np.hstack([self.columns, columns_hat])

    def _factored_solve(self, alpha: float) -> np.ndarray:
        """Ŵ by Woodbury's identity in the eigenbasis, its relative residual, and W = V Ŵ."""
        self._prepare(alpha)
        weight_hat = self._scale[:, None] * self._cross_hat
        if self.columns.shape[1]:
            weight_hat -= self._scaled_columns @ np.linalg.solve(self._capacitance, self.columns.T @ weight_hat)
        product = (self.spectrum + alpha)[:, None] * weight_hat + self.columns @ (self.columns.T @ weight_hat)
        self.residual = float(np.linalg.norm(self._cross_hat - product) /
                              max(np.linalg.norm(self._cross_hat), 1e-300))
        return self.basis @ weight_hat

    # --- solving ------------------------------------------------------------------------------------------------

    def weights(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W (d, C), bias (C,))`` of the ridge fit at ``alpha`` (the intercept is not penalised)."""
        if self.count == 0:
            raise ConfigError("ridge head has no samples to fit")
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
        """:func:`~edgetl.runtime.bundle.heads.alpha_scale`, the alpha used before any held-out choice."""
        trace = float(np.trace(self.gram)) if self.gram is not None else \
            float(self.spectrum.sum() + np.einsum("ij,ij->", self.columns, self.columns))   # trace is basis-free
        return alpha_scale(trace, self.dim)

    def select_alpha(self, holdout_x: np.ndarray | None, holdout_y: np.ndarray | None) -> float:
        """The grid's best alpha on held-out samples; the system is factored afresh (O(d³)) on the way."""
        if holdout_x is None or holdout_y is None or len(holdout_y) == 0:
            return self.default_alpha()
        if self.gram is not None:
            self.factorize()
        elif self.columns.shape[1]:
            self._rebase()
        return alpha_on_holdout(self.spectrum, self.basis, self._cross_hat, self.mean_x, self.mean_y, holdout_x,
                                holdout_y)
