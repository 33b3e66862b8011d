"""Factorisations of a kernel (float64 in, float64 factors out): Tucker-2, CP-ALS and truncated SVD."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac, partial_tucker

_CP_ITERATIONS = 300
_CP_TOLERANCE = 1e-8
_CP_MAX_COMPONENT = 10.0  # a component norm above this many times the kernel norm means components cancel


class DegenerateFit(ValueError):
    """CP-ALS did not converge to a usable factorisation."""


@dataclass(frozen=True)
class Tucker2:
    first: np.ndarray  # (r_in, C_in): projects the input channels
    core: np.ndarray  # (r_out, r_in, *kernel)
    last: np.ndarray  # (C_out, r_out): expands to the output channels


@dataclass(frozen=True)
class CP:
    first: np.ndarray  # (R, C_in)
    spatial: tuple[np.ndarray, ...]  # one (R, k_j) per spatial axis
    last: np.ndarray  # (C_out, R), component weights folded in


@contextlib.contextmanager
def _quiet_tensorly() -> Iterator[None]:
    """tensorly's UserWarnings stay out of users' terminals: they describe its own adjustments (an SVD of a mode
    smaller than the rank asked is truncated, a spatial mode's SVD init padded with random columns), which the
    factor shapes and the reconstruction errors onnxprune reports already reflect."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"tensorly(\.|$)")
        yield


def tucker2(kernel: np.ndarray, r_in: int, r_out: int, seed: int) -> Tucker2:
    """Tucker-2 of a (C_out, C_in, *k) kernel on its two channel modes."""
    tl.set_backend("numpy")
    with _quiet_tensorly():
        (core, (u_out, u_in)), _ = partial_tucker(kernel, rank=[r_out, r_in], modes=[0, 1], init="svd",
                                                  random_state=seed)
    return Tucker2(first=u_in.T, core=core, last=u_out)


def cp(kernel: np.ndarray, rank: int, seed: int) -> CP:
    """Rank-R CP of a (C_out, C_in, *k) kernel; raises DegenerateFit when the fit is unusable.

    The channel modes are first compressed to at most R dimensions by Tucker-2 (lossless for a tensor
    of CP rank R), CP-ALS runs on that small core, and its channel factors are lifted back.
    """
    tl.set_backend("numpy")
    c_out, c_in = kernel.shape[:2]
    with _quiet_tensorly():
        (core, (u_out, u_in)), _ = partial_tucker(kernel, rank=[min(c_out, rank), min(c_in, rank)], modes=[0, 1],
                                                  init="svd", random_state=seed)
        weights, factors = parafac(core, rank=rank, n_iter_max=_CP_ITERATIONS, init="svd", tol=_CP_TOLERANCE,
                                   normalize_factors=True, random_state=seed)
    factors = [u_out @ factors[0], u_in @ factors[1], *factors[2:]]
    norm = float(np.linalg.norm(kernel))
    if not all(np.all(np.isfinite(f)) for f in factors) or not np.all(np.isfinite(weights)):
        raise DegenerateFit("CP-ALS produced non-finite factors")
    largest = float(np.max(np.abs(weights)))
    if norm > 0 and largest > _CP_MAX_COMPONENT * norm:
        raise DegenerateFit(f"CP components cancel each other (largest component {largest / norm:.1f}x the kernel norm)")
    if norm > 0:
        error = float(np.linalg.norm(kernel - tl.cp_to_tensor((weights, factors)))) / norm
        if not error < 1.0:
            raise DegenerateFit(f"CP fit is no better than a zero kernel (relative error {error:.3g})")
    out, inp, *spatial = factors
    return CP(first=inp.T, spatial=tuple(f.T for f in spatial), last=out * weights)


def svd(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncated SVD W (K, N) ~ A (K, r) @ B (r, N), singular values split evenly between A and B."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]
