"""SparseGPT's layer-wise OBS re-fit (Frantar and Alistarh, 2023), in numpy, batched over groups.

Minimise ||X W^T - X W'^T||^2 = tr((W' - W) H (W' - W)^T), H = X^T X, over W' with a sparsity pattern. Columns
are treated left to right: a column's pruned weights are zeroed and the error this causes is spread over the
columns not yet treated with the inverse Hessian (its upper Cholesky factor U, H^-1 = U^T U), lazily in blocks
of `block` columns. The mask is chosen per block from the weights as updated so far: unstructured, the
smallest w^2 / U_ii^2 over the whole block (all groups and rows; each block zeroes its share of the layer's
count, so the layer loses exactly round(sparsity x size) weights); N:M, in every M consecutive columns of a
row, keep the N of largest w^2 / U_ii^2. The sweep is greedy: on rare small layers (3 of 369 fixture layers, d <= 27)
it ends worse than plain magnitude pruning; `refit` gives the exact least-squares re-fit of a fixed mask instead.
"""
from __future__ import annotations

import numpy as np

from onnxprune.sparsity.base import count_for, nm_mask

BLOCK = 128
DAMP = 0.01  # H + DAMP x mean(diag H) x I, per group


def inverse_cholesky(H: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Upper U with U^T U = (H + damp mean(diag) I)^-1, per group; the damping grows tenfold until it factors."""
    d = H.shape[-1]
    mean = np.einsum("gii->g", H) / max(d, 1)
    scale = np.where(mean > 0, mean, 1.0)[:, None, None]
    eye = np.eye(d)
    for _ in range(8):
        try:
            damped = H + damp * scale * eye
            inverse = np.linalg.inv(damped)
            inverse = (inverse + inverse.transpose(0, 2, 1)) / 2
            return np.linalg.cholesky(inverse).transpose(0, 2, 1)
        except np.linalg.LinAlgError:
            damp *= 10
    raise np.linalg.LinAlgError("the layer Hessian does not factor even with strong damping")


def prune(W: np.ndarray, H: np.ndarray, *, sparsity: float | None = None, n: int = 2, m: int = 4,
          block: int = BLOCK, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """(W', keep mask) for W (groups, rows, d) and H (groups, d, d); `sparsity` None means N:M (d a multiple of m)."""
    W = np.array(W, dtype=np.float64)
    g, r, d = W.shape
    U = inverse_cholesky(np.asarray(H, dtype=np.float64), damp)
    keep = np.ones(W.shape, dtype=bool)
    block = max(m, block // m * m) if sparsity is None else block
    for a in range(0, d, block):
        e = min(a + block, d)
        W1, U1 = W[:, :, a:e].copy(), U[:, a:e, a:e]
        diag = np.einsum("gii->gi", U1)[:, None, :]  # (groups, 1, columns)
        K1 = np.ones(W1.shape, dtype=bool)
        if sparsity is not None:
            count = count_for(sparsity, g * r * e) - count_for(sparsity, g * r * a)
            score = np.square(W1 / diag).reshape(-1)
            K1.reshape(-1)[np.argsort(score, kind="stable")[:count]] = False
        errors = np.zeros_like(W1)
        for i in range(e - a):
            if sparsity is None and i % m == 0:
                K1[:, :, i : i + m] = nm_mask(np.square(W1[:, :, i : i + m] / diag[:, :, i : i + m]), n, m, -1)
            w = W1[:, :, i]
            err = np.where(K1[:, :, i], 0.0, w) / diag[:, :, i]
            W1[:, :, i:] -= err[:, :, None] * U1[:, None, i, i:]
            errors[:, :, i] = err
        W[:, :, a:e] = np.where(K1, W1, 0.0)
        keep[:, :, a:e] = K1
        W[:, :, e:] -= errors @ U[:, a:e, e:]
    return W, keep


def refit(W: np.ndarray, H: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The exact re-fit of a fixed mask: each row's kept weights minimise its output error (least squares on
    H, minimum norm where H is singular); pruned weights are zero. One solve per row: for small layers or few rows."""
    W = np.asarray(W, dtype=np.float64)
    out = np.zeros_like(W)
    for g, r in np.ndindex(*W.shape[:2]):
        kept, pruned = keep[g, r], ~keep[g, r]
        h = H[g]
        rhs = h[np.ix_(kept, kept)] @ W[g, r, kept] + h[np.ix_(kept, pruned)] @ W[g, r, pruned]
        out[g, r, kept] = np.linalg.lstsq(h[np.ix_(kept, kept)], rhs, rcond=None)[0]
    return out


def output_error(W: np.ndarray, new: np.ndarray, H: np.ndarray) -> float:
    """||X W^T - X new^T||^2 summed over groups, from H = X^T X alone."""
    D = np.asarray(new, dtype=np.float64) - np.asarray(W, dtype=np.float64)
    return float(max(np.sum((D @ np.asarray(H, dtype=np.float64)) * D), 0.0))
