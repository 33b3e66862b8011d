"""What the workflows (sensitivity, iterative pruning) read from `evaluate()`: the one value they judge, with
evaluate() kept quiet (no progress bar)."""
from __future__ import annotations

from typing import Any

from onnxprune.errors import InvalidRequestError


def default_key(values: dict, metric: Any) -> str:
    """The value judged when none is named: 'top1' for the accuracy metric, else the metric's only value."""
    if metric == "accuracy" and "top1" in values:
        return "top1"
    keys = [k for k in values if k != "n"]
    if len(keys) == 1:
        return keys[0]
    raise InvalidRequestError(f"the metric returns several values {keys}; choose one with key=")


def pick_value(values: dict, key: str) -> float:
    """values[key] as a float; the error names the values the metric does return."""
    if key not in values:
        raise InvalidRequestError(f"the metric has no value '{key}'; it returns {[k for k in values if k != 'n']}")
    return float(values[key])


class QuietStream:
    """A stream that is not a terminal: evaluate() shows no progress bar."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
