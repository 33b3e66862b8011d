"""Pruning options, with NetsPresso Model Compressor's names, values and defaults."""
from __future__ import annotations

from dataclasses import dataclass

from onnxprune.errors import InvalidRequestError

_CHOICES = {
    "policy": ("sum", "average", "max"),
    "layer_norm": ("standard_score", "tss_norm", "linear_scaling", "softmax_norm", "none"),
    "group_policy": ("sum", "average", "count", "none"),
    "reshape_channel_axis": (0, 1, -1, -2),
    "step_op": ("round", "round_up", "round_down", "none"),
}


@dataclass(frozen=True)
class Options:
    """How scores combine and how many channels go.

    policy: how the scores of coupled layers combine into one channel score.
    layer_norm: how scores of different groups are made comparable (global scope).
    group_policy: how scores combine across groups of a group conv or across heads.
    reshape_channel_axis: at a Reshape into (heads, dims): -1 or 1 prunes dims inside every head,
        0 or -2 prunes whole heads.
    step_size, step_op: the number of channels kept in a group is rounded to a multiple of step_size.
    """

    policy: str = "average"
    layer_norm: str = "standard_score"
    group_policy: str = "average"
    reshape_channel_axis: int = -1
    step_size: int = 2
    step_op: str = "round"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, value.lower())
                value = value.lower()
            if value not in allowed:
                raise InvalidRequestError(f"Options.{name}={value!r} is not one of {list(allowed)}")
        if not isinstance(self.step_size, int) or self.step_size < 1:
            raise InvalidRequestError(f"Options.step_size={self.step_size!r} must be a positive integer")
