"""Streamed normal equations and the ridge solve.

For one consumer (per group of a grouped Conv) the design matrix X (rows = samples x output positions,
columns = the layer's inputs it reads, plus a column of ones for the bias) and the targets Y (the unpruned
model's output of that layer) are never stored: only G = X^T X, B = X^T Y and the per-output sums of Y^2
are accumulated, in float64, batch by batch. Memory depends on the number of unknowns, not on the number
of calibration samples.
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
        """x: (rows, groups, d), y: (rows, groups, k) for one batch."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        ones = np.ones(x.shape[:2] + (1,), dtype=np.float64)
        xa = np.concatenate([x, ones], axis=2)
        xt = xa.transpose(1, 2, 0)  # (groups, d + 1, rows): batched BLAS products below
        g = xt @ xa.transpose(1, 0, 2)
        b = xt @ y.transpose(1, 0, 2)
        yy = np.einsum("rgk,rgk->gk", y, y)
        if self.G is None:
            self.G, self.B, self.yy = g, b, yy
        else:
            self.G += g
            self.B += b
            self.yy += yy
        self.rows += x.shape[0]

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

    def solve(self, ridge: float, fit_bias: bool = True) -> np.ndarray:
        """theta (groups, d + 1, k) minimising ||[X 1] theta - Y||^2 + lambda ||W||^2 (the bias is not
        penalised); without fit_bias the bias row is held at zero."""
        lam = self.penalty(ridge)
        d = self.G.shape[1] - 1
        n = d + 1 if fit_bias else d
        out = np.zeros_like(self.B)
        eye = np.eye(n)
        if fit_bias:
            eye[d, d] = 0.0
        for k in range(len(self.G)):
            a = self.G[k, :n, :n] + lam[k] * eye
            b = self.B[k, :n]
            try:
                out[k, :n] = np.linalg.solve(a, b)
                if not np.all(np.isfinite(out[k])):
                    raise np.linalg.LinAlgError
            except np.linalg.LinAlgError:
                out[k, :n] = np.linalg.lstsq(a, b, rcond=None)[0]
        return out

    def residual(self, theta: np.ndarray) -> float:
        """sum over groups and outputs of ||[X 1] theta - Y||^2, from the statistics alone."""
        quad = np.einsum("gik,gij,gjk->", theta, self.G, theta)
        cross = np.einsum("gik,gik->", theta, self.B)
        return float(max(quad - 2.0 * cross + self.yy.sum(), 0.0))

    def target_energy(self) -> float:
        return float(self.yy.sum())

    def relative_error(self, theta: np.ndarray) -> float:
        energy = self.target_energy()
        return float(np.sqrt(self.residual(theta) / energy)) if energy > 0 else 0.0
