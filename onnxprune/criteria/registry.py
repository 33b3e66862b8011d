"""The criteria registry and the context a criterion receives."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from onnxprune.coupling.analysis import Analysis
from onnxprune.errors import InvalidRequestError
from onnxprune.options import Options


@dataclass
class CriterionContext:
    analysis: Analysis
    options: Options
    groups: list[int]  # the groups to score
    calibration: Any = None
    gradients: dict[str, np.ndarray] | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)


Criterion = Callable[[CriterionContext], dict[int, np.ndarray]]
CRITERIA: dict[str, Criterion] = {}
ALIASES = {"pr_l2": "l2", "pr_gm": "gm", "pr_nn": "nn", "pr_snp": "snp", "pr_id": "index"}


def register_criterion(name: str, fn: Criterion | None = None):
    """Register `fn` under `name`; usable as a decorator: @register_criterion("mine")."""

    def add(f: Criterion) -> Criterion:
        CRITERIA[name.lower()] = f
        return f

    return add(fn) if fn is not None else add


def criterion_for(method: str) -> Criterion:
    """The criterion registered as `method` (case-insensitive; NetsPresso spellings accepted)."""
    if not isinstance(method, str):
        raise InvalidRequestError(f"method must be a criterion name, not {method!r}; available: {sorted(CRITERIA)}")
    key = ALIASES.get(method.lower(), method.lower())
    if key == "index":
        raise InvalidRequestError(f"method '{method}' is pruning by channel index: call "
                                  "op.prune_by_index(model, {layer: [channel indices]}) (CLI: --indices FILE.json)")
    if key not in CRITERIA:
        raise InvalidRequestError(f"unknown pruning method '{method}'; available: {sorted(CRITERIA)} "
                                  f"(NetsPresso spellings {sorted(a.upper() for a in ALIASES)} accepted)")
    return CRITERIA[key]
