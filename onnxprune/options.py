"""Pruning options, with NetsPresso Model Compressor's names, values and defaults."""
from __future__ import annotations

from dataclasses import dataclass

from onnxprune.errors import InvalidRequestError

CHOICES = {
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
    group_policy: how the slices of one channel inside one weight combine (a grouped conv removes the same
        position from every group, a Reshape into heads the same dim from every head): sum, average,
        none (the first group's slice), count (each group ranks its slices; a channel scores the number of
        slices it beats, summed over groups). Details in onnxprune/criteria/weight.py.
    reshape_channel_axis: at a Reshape into (heads, dims): -1 or 1 prunes dims inside every head,
        0 or -2 prunes whole heads.
    step_size, step_op: the number of channels kept in a group is rounded to a multiple of step_size.
    max_ratio: global scope and SLAMP never remove more than this fraction of one group (nor all of it).
    score_consumers: weight criteria also score the consumer slices (input channels of the layers
        reading a group), as Torch-Pruning can; off by default (producer slices only, NetsPresso style). On
        exports with BN folded into the convs it makes l1 / l2 / gm / lamp choose much better channels
        (benchmarks/criteria_quality.py; README "How good is each criterion").
    """

    policy: str = "average"
    layer_norm: str = "standard_score"
    group_policy: str = "average"
    reshape_channel_axis: int = -1
    step_size: int = 2
    step_op: str = "round"
    max_ratio: float = 0.9
    score_consumers: bool = False

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, value.lower())
                value = value.lower()
            if value not in allowed:
                raise InvalidRequestError(f"Options.{name}={value!r} is not one of {list(allowed)}")
        if not isinstance(self.step_size, int) or isinstance(self.step_size, bool) or self.step_size < 1:
            raise InvalidRequestError(f"Options.step_size={self.step_size!r} must be a positive integer")
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) \
                or not 0.0 < self.max_ratio < 1.0:
            raise InvalidRequestError(f"Options.max_ratio={self.max_ratio!r} must be a number in (0, 1)")
        if not isinstance(self.score_consumers, bool):
            raise InvalidRequestError(f"Options.score_consumers={self.score_consumers!r} must be True or False")
