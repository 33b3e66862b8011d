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
