"""Rank selection: explicit per layer, a fraction of full rank, an energy threshold, or VBMF.

Tucker ranks are (input rank, output rank) as in NetsPresso; CP and SVD take one rank.
VBMF ranks are adjusted by NetsPresso's calibration ratio r in [-1, 1]:
kept = VBMF rank + (full rank - VBMF rank) * r, rounded half up, then clipped to 1..full rank
(r = 1 keeps the full rank, r = 0 the VBMF rank, r = -1 gives 2 * VBMF rank - full rank, at least 1).

Rank step: ranks are then rounded UP to a multiple of `rank_step`, clipped to the full rank. onnxruntime's CPU
convolutions run in the NCHWc layout, whose channel block is 16 on AVX-512 (8 on AVX2): a rank of 17..32 costs
the same time as 32 there (benchmarks/README.md), so the extra rank is free accuracy. The default,
DEFAULT_RANK_STEP = 16, applies to computed ranks (rank_ratio, energy, VBMF); explicit ranks are kept as given
unless a rank_step is passed. rank_step=1 turns rounding off.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.decomposition.vbmf import vbmf_rank
from onnxprune.errors import InvalidRequestError


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def calibrate(vbmf: int, full: int, ratio: float) -> int:
    """NetsPresso's calibration of a VBMF rank, clipped to 1..full."""
    return _clip(round_half_up(vbmf + (full - vbmf) * ratio), full)


def energy_rank(matrix: np.ndarray, energy: float) -> int:
    """Smallest rank whose singular values keep `energy` of the squared Frobenius norm."""
    s2 = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1
    return int(np.searchsorted(np.cumsum(s2) / total, energy - 1e-12) + 1)


def unfold(kernel: np.ndarray, mode: int) -> np.ndarray:
    """Mode-`mode` unfolding: that axis first, the rest flattened."""
    return np.moveaxis(kernel, mode, 0).reshape(kernel.shape[mode], -1)


DEFAULT_RANK_STEP = 16


def _clip(rank: int, full: int) -> int:
    return min(max(rank, 1), full)


def round_up(rank: int, step: int, full: int) -> int:
    """`rank` rounded up to a multiple of `step`, at most `full`."""
    return min(-(-rank // step) * step, full)


@dataclass(frozen=True)
class RankPolicy:
    """Exactly one way of choosing ranks, validated."""

    ranks: Mapping[str, object] | None = None
    rank_ratio: float | None = None
    recommendation: str | None = None
    calibration_ratio: float = 0.0
    energy: float | None = None
    rank_step: int | None = None  # None: DEFAULT_RANK_STEP for computed ranks, 1 (as given) for explicit ranks

    def __post_init__(self) -> None:
        given = [n for n, v in (("ranks", self.ranks), ("rank_ratio", self.rank_ratio),
                                ("recommendation", self.recommendation), ("energy", self.energy)) if v is not None]
        if len(given) != 1:
            raise InvalidRequestError(
                "choose exactly one rank selection: ranks=, rank_ratio=, recommendation='vbmf' or energy="
                + (f" (got {', '.join(given)})" if given else ""))
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise InvalidRequestError(f"rank_ratio must be in (0, 1], got {self.rank_ratio}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise InvalidRequestError(f"energy must be in (0, 1], got {self.energy}")
        if self.recommendation is not None and str(self.recommendation).lower() != "vbmf":
            raise InvalidRequestError(f"unknown recommendation '{self.recommendation}': the only one is 'vbmf'")
        if not -1 <= self.calibration_ratio <= 1:
            raise InvalidRequestError(f"calibration_ratio must be in [-1, 1], got {self.calibration_ratio}")
        if self.rank_step is not None and (not isinstance(self.rank_step, (int, np.integer))
                                           or isinstance(self.rank_step, bool) or self.rank_step < 1):
            raise InvalidRequestError(f"rank_step must be a positive integer (1 = no rounding), got {self.rank_step!r}")
        if self.calibration_ratio != 0 and self.recommendation is None:
            raise InvalidRequestError("calibration_ratio adjusts VBMF ranks: use it with recommendation='vbmf'")

    @property
    def step(self) -> int:
        """The rank step in force: the one given, else 1 for explicit ranks and DEFAULT_RANK_STEP otherwise."""
        if self.rank_step is not None:
            return int(self.rank_step)
        return 1 if self.ranks is not None else DEFAULT_RANK_STEP

    def choose(self, name: str, method: str, full: tuple[int, ...], kernel: np.ndarray | None) -> tuple[int, ...]:
        """Ranks for one layer, rounded up to the rank step; `kernel` (O, I, ...) or a 2-D weight is needed for
        energy and VBMF."""
        ranks = self._choose(name, method, full, kernel)
        return tuple(round_up(r, self.step, f) for r, f in zip(ranks, full))

    def _choose(self, name: str, method: str, full: tuple[int, ...], kernel: np.ndarray | None) -> tuple[int, ...]:
        if self.ranks is not None:
            return self._explicit(name, method, full)
        if self.rank_ratio is not None:
            return tuple(_clip(round_half_up(self.rank_ratio * f), f) for f in full)
        if self.energy is not None:
            if method == "cp":
                raise InvalidRequestError("energy= selects SVD / Tucker ranks; for CP use ranks=, rank_ratio= or VBMF")
            modes = (1, 0) if method == "tucker" else (0,)
            return tuple(_clip(energy_rank(unfold(kernel, m), self.energy), f) for m, f in zip(modes, full))
        if method == "tucker":
            return tuple(calibrate(vbmf_rank(unfold(kernel, m)), f, self.calibration_ratio)
                         for m, f in zip((1, 0), full))
        if method == "cp":  # a CP rank needs at least the rank of each unfolding
            estimate = max(vbmf_rank(unfold(kernel, 0)), vbmf_rank(unfold(kernel, 1)))
        else:
            estimate = vbmf_rank(unfold(kernel, 0))
        return (calibrate(estimate, full[0], self.calibration_ratio),)

    def _explicit(self, name: str, method: str, full: tuple[int, ...]) -> tuple[int, ...]:
        value = self.ranks[name]
        ranks = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        expected = "(input rank, output rank)" if method == "tucker" else "one rank"
        if len(ranks) != len(full) or not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool)
                                                for r in ranks):
            raise InvalidRequestError(f"layer '{name}': {method} takes {expected}, got {value!r}")
        for rank, limit in zip(ranks, full):
            if not 1 <= rank <= limit:
                raise InvalidRequestError(
                    f"layer '{name}': rank {rank} is out of range for {method}, which allows 1..{limit} "
                    f"(full ranks {full})")
        return tuple(int(r) for r in ranks)
