"""How many channels each group keeps, and which."""
from __future__ import annotations

import math

import numpy as np

from onnxprune.errors import InvalidRequestError
from onnxprune.options import Options


def check_ratio(ratio: float, what: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not (0.0 <= float(ratio) < 1.0):
        raise InvalidRequestError(f"{what}={ratio!r} must be a number in [0, 1)")
    return float(ratio)


def kept_count(size: int, ratio: float, options: Options) -> int:
    """Channels a group of `size` keeps after removing `ratio` of them, rounded to the step."""
    keep = size - math.floor(ratio * size + 1e-9)
    step = options.step_size
    if step > 1 and options.step_op != "none" and ratio > 0:
        quotient = keep / step
        rounded = {"round": math.floor(quotient + 0.5), "round_up": math.ceil(quotient),
                   "round_down": math.floor(quotient)}[options.step_op]
        keep = rounded * step
        if keep == 0:
            keep = step
    return int(min(max(keep, 1), size))


def lowest_scores(scores: np.ndarray, n_remove: int) -> np.ndarray:
    """Indices of the n lowest scores; ties go to the lower index (deterministic)."""
    order = np.argsort(np.nan_to_num(scores, nan=-np.inf), kind="stable")
    return np.sort(order[:n_remove])


def normalize(scores: np.ndarray, layer_norm: str) -> np.ndarray:
    """Scale one group's scores so that groups compare (global scope). With s the scores, n their count:

    standard_score: (s - mean(s)) / std(s)          (all zeros when std = 0)
    tss_norm:       s / sum(|s|)                     (total sum scaling; 1/n each when the sum is 0)
    linear_scaling: (s - min(s)) / (max(s) - min(s)) (all zeros when max = min)
    softmax_norm:   exp(s - max(s)) / sum(exp(s - max(s)))
    none:           s
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    if layer_norm == "none" or len(s) == 0:
        return s
    if layer_norm == "standard_score":
        std = s.std()
        return (s - s.mean()) / std if std > 0 else np.zeros_like(s)
    if layer_norm == "tss_norm":
        total = np.abs(s).sum()
        return s / total if total > 0 else np.full_like(s, 1.0 / len(s))
    if layer_norm == "linear_scaling":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)
    if layer_norm == "softmax_norm":
        e = np.exp(s - s.max())
        return e / e.sum()
    raise InvalidRequestError(f"layer_norm={layer_norm!r} is not one of standard_score, tss_norm, "
                              "linear_scaling, softmax_norm, none")


def lamp_scores(norms: np.ndarray) -> np.ndarray:
    """LAMP (Lee et al., ICLR 2021) on channel norms w of one layer: with w sorted ascending,
    score(w_i) = w_i^2 / sum_{j >= i} w_j^2. The largest channel scores 1; ties keep index order."""
    w2 = np.square(np.nan_to_num(np.asarray(norms, dtype=np.float64), nan=0.0))
    order = np.argsort(w2, kind="stable")
    tail = np.cumsum(w2[order][::-1])[::-1]
    out = np.empty_like(w2)
    out[order] = np.divide(w2[order], tail, out=np.zeros_like(tail), where=tail > 0)
    return out


def removable(size: int, options: Options) -> int:
    """The most units global allocation may take from a group of `size`: max_ratio of it, never all."""
    return max(0, min(math.floor(options.max_ratio * size + 1e-9), size - 1))


def rounded_removal(size: int, n_remove: int, options: Options, cap: int) -> int:
    """`n_remove` rounded so that the kept count is a step multiple, then held to at most `cap`."""
    if n_remove <= 0:
        return 0
    keep = kept_count(size, n_remove / size, options)
    if size - keep > cap:
        keep = size - cap
        if options.step_op != "none" and options.step_size > 1:
            keep = min(size, math.ceil(keep / options.step_size) * options.step_size)
    return size - keep


def pooled_counts(pool: dict[int, np.ndarray], ratio: float, options: Options) -> dict[int, int]:
    """Units to remove per group when the ratio*N lowest pooled scores go (N: all units of the pool).

    No group loses more than `removable()`; each count is then rounded by `rounded_removal`.
    """
    groups = sorted(pool)
    sizes = {g: len(pool[g]) for g in groups}
    target = math.floor(check_ratio(ratio) * sum(sizes.values()) + 1e-9)
    caps = {g: removable(sizes[g], options) for g in groups}
    owner = np.concatenate([np.full(caps[g], g, dtype=np.int64) for g in groups] or [np.zeros(0, np.int64)])
    lowest = np.concatenate([np.sort(np.nan_to_num(pool[g], nan=-np.inf))[: caps[g]] for g in groups]
                            or [np.zeros(0)])
    chosen = owner[np.argsort(lowest, kind="stable")[:target]]
    counts = {g: int(np.count_nonzero(chosen == g)) for g in groups}
    return {g: rounded_removal(sizes[g], counts[g], options, caps[g]) for g in groups}
