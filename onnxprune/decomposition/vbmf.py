"""Rank of a noisy matrix by analytic empirical variational Bayesian matrix factorisation.

Nakajima, Sugiyama, Babacan, Tomioka (2013), "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14: the noise variance is the minimiser of the closed-form free
energy over a bounded interval, and a component survives when its singular value exceeds the threshold
sigma * sqrt(M * x_bar).
"""
from __future__ import annotations

import math

import numpy as np

_TINY = 1e-300


def vbmf_rank(matrix: np.ndarray) -> int:
    """Number of components EVBMF keeps for this 2-D matrix."""
    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    l_dim, m_dim = y.shape
    s = np.linalg.svd(y, compute_uv=False)
    if s.size == 0 or s[0] <= 0:
        return 0
    alpha = l_dim / m_dim
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    h_bar = min(math.ceil(l_dim / (1 + alpha)) - 1, s.size - 1)  # largest rank VB can keep
    upper = float(np.sum(s**2)) / (l_dim * m_dim)
    lower = max(s[h_bar] ** 2 / (m_dim * x_bar), float(np.mean(s[h_bar:] ** 2)) / m_dim)
    log_s2 = np.log(np.maximum(s**2, _TINY))

    def free_energy(sigma2: float) -> float:
        x = s**2 / (m_dim * sigma2)
        log_x = log_s2 - math.log(m_dim * sigma2)
        energy = float(np.sum(x - log_x))
        big = x > x_bar
        if np.any(big):
            z = x[big] - (1 + alpha)
            tau = 0.5 * (z + np.sqrt(z * z - 4 * alpha))
            energy += float(np.sum(np.log(tau + 1) + alpha * np.log(tau / alpha + 1) - tau))
        return energy

    sigma2 = upper if lower >= upper else _minimise(free_energy, lower, upper)
    return int(np.sum(s > math.sqrt(m_dim * sigma2 * x_bar)))


def _minimise(f, lo: float, hi: float) -> float:
    """Global minimum on a log grid, refined by golden-section search around the best point."""
    grid = np.geomspace(lo, hi, 256)
    best = int(np.argmin([f(v) for v in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2
