"""Streamed normal equations and the ridge solve.

For one consumer (per group of a grouped Conv) the design matrix X (rows = samples x output positions,
columns = the layer's inputs it reads, plus a column of ones for the bias) and the targets Y (the unpruned
model's output of that layer) are never stored: only G = X^T X, B = X^T Y and the per-output sums of Y^2
are accumulated, in float64, batch by batch. Memory depends on the number of unknowns, not on the number
of calibration samples. A batch's products run in the dtype of its rows: float32 rows (large layers, see
refit.FLOAT32_WORK) halve the time of the products, each batch's sums then added in float64; the column
sums and sum(Y^2) are taken in float64 either way.
"""
from __future__ import annotations

import numpy as np


class Gram:
    """Accumulates G = [X 1]^T [X 1], B = [X 1]^T Y and sum(Y^2) for `groups` independent problems."""

    def __init__(self) -> None:
        self.G: np.ndarray | None = None  # (groups, d + 1, d + 1)
        self.B: np.ndarray | None = None  # (groups, d + 1, outputs per group)
        self.yy: np.ndarray | None = None  # (groups, outputs per group)
        self.rows = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """x: (groups, rows, d), y: (groups, rows, k) for one batch (float64 or float32, as Consumer.design /
        target give; fastest when x and y are transposed views of (groups, d, rows) and (groups, k, rows) arrays).
        The products run in x's dtype; the sums kept are float64."""
        groups, rows, d = x.shape
        xt = x.transpose(0, 2, 1)
        g = np.empty((groups, d + 1, d + 1))
        if groups == 1:  # a 2-D x.T @ x: BLAS's symmetric rank-k update, half the work
            g[0, :d, :d] = x[0].T @ x[0]
        else:
            g[:, :d, :d] = xt @ x
        g[:, :d, d] = g[:, d, :d] = x.sum(axis=1, dtype=np.float64)
        g[:, d, d] = rows
        b = np.concatenate([xt @ y, y.sum(axis=1, dtype=np.float64)[:, None, :]], axis=1)
        yy = np.einsum("grk,grk->gk", y, y, dtype=np.float64)
        if self.G is None:
            self.G, self.B, self.yy = g, b, yy
        else:
            self.G += g
            self.B += b
            self.yy += yy
        self.rows += rows

    def merge(self, other: "Gram") -> None:
        """Add the sums of `other` (the same problem over other calibration rows)."""
        if other.G is None:
            return
        if self.G is None:
            self.G, self.B, self.yy = other.G, other.B, other.yy
        else:  # new arrays: partials coming back from Ray tasks are read-only
            self.G = self.G + other.G
            self.B = self.B + other.B
            self.yy = self.yy + other.yy
        self.rows += other.rows

    @property
    def unknowns(self) -> int:
        """Unknowns per output (weights it reads plus its bias)."""
        return 0 if self.G is None else self.G.shape[1]

    def penalty(self, ridge: float) -> np.ndarray:
        """Absolute ridge lambda per group: ridge * mean diagonal of X^T X (bias column excluded)."""
        d = self.G.shape[1] - 1
        diag = np.einsum("gii->gi", self.G)[:, :d]
        scale = diag.mean(axis=1) if d else np.zeros(len(self.G))
        return ridge * np.where(scale > 0, scale, 1.0)

    def solve(self, ridge: float, fit_bias: bool = True, prior: np.ndarray | None = None) -> np.ndarray:
        """theta (groups, d + 1, k) minimising ||[X 1] theta - Y||^2 + lambda ||W - W_prior||^2 (the bias is not
        penalised; W_prior: the weights of `prior`, a theta of this shape, or zero); without fit_bias the bias
        row is held at zero."""
        lam = self.penalty(ridge)
        d = self.G.shape[1] - 1
        n = d + 1 if fit_bias else d
        out = np.zeros_like(self.B)
        eye = np.eye(n)
        if fit_bias:
            eye[d, d] = 0.0
        a = self.G[:, :n, :n] + lam[:, None, None] * eye
        b = self.B[:, :n] if prior is None else self.B[:, :n] + lam[:, None, None] * (eye @ prior[:, :n])
        try:
            out[:, :n] = np.linalg.solve(a, b)
            bad = ~np.all(np.isfinite(out[:, :n]), axis=(1, 2))
        except np.linalg.LinAlgError:  # a singular group: solve one by one, least squares where needed
            bad = np.ones(len(a), dtype=bool)
        for k in np.flatnonzero(bad):
            try:
                out[k, :n] = np.linalg.solve(a[k], b[k])
                if not np.all(np.isfinite(out[k])):
                    raise np.linalg.LinAlgError
            except np.linalg.LinAlgError:
                out[k, :n] = np.linalg.lstsq(a[k], b[k], rcond=None)[0]
        return out

    def residual(self, theta: np.ndarray) -> float:
        """sum over groups and outputs of ||[X 1] theta - Y||^2, from the statistics alone."""
        quad = np.einsum("gik,gik->", theta, self.G @ theta)  # one matrix product (a 3-operand einsum loops)
        cross = np.einsum("gik,gik->", theta, self.B)
        return float(max(quad - 2.0 * cross + self.yy.sum(), 0.0))

    def target_energy(self) -> float:
        return float(self.yy.sum())

    def relative_error(self, theta: np.ndarray) -> float:
        energy = self.target_energy()
        return float(np.sqrt(self.residual(theta) / energy)) if energy > 0 else 0.0
