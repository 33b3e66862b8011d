"""Where a layer's channels sit: the weight layout of Conv, ConvTranspose, Gemm, MatMul and embedding Gather.

One description read by coupling, stats, decomposition, sparsity and reconstruction:
- Conv:          weight [out, in / group, *kernel] (slot 1), bias slot 2; activations (N, C, ...)
- ConvTranspose: weight [in, out / group, *kernel] (slot 1), bias slot 2; activations (N, C, ...)
- Gemm:          B [in, out], or [out, in] with transB (slot 1); C slot 2; A's channels on axis 1, 0 with transA
- MatMul:        a constant right operand [..., in, out] (slot 1; activation channels last), or a constant left
                 operand [..., out, in] (slot 0; the right operand's channels on axis -2)
- Gather:        an embedding table [vocab, dim] (slot 0, axis 0, 2-D): `in_axis` is the vocabulary
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx

from onnxprune.graph import attribute


@dataclass(frozen=True)
class WeightLayout:
    """Axes of one layer's constant weight (non-negative, for the weight's rank) and of its activations.

    `per_group_axis` is the weight axis that holds one group's channels (Conv: in, ConvTranspose: out);
    `x_axis` / `y_axis` are the channel axes of the activation input and of the output (negative: from the end;
    None: the input carries no channels, as an embedding's indices).
    """

    op_type: str
    slot: int  # input slot of the weight
    out_axis: int
    in_axis: int
    group: int = 1
    per_group_axis: int | None = None
    bias: int | None = None  # input slot of the bias (Conv / ConvTranspose B, Gemm C) when the node has one
    x_axis: int | None = 1
    y_axis: int = 1
    trans_a: int = 0
    trans_b: int = 0
    alpha: float = 1.0
    beta: float = 1.0

    def channels(self, shape: Sequence[int], axis: int) -> int:
        """Channels of the whole layer along a weight axis (the axis size, times the group count when it holds
        one group's channels)."""
        return shape[axis] * self.group if axis == self.per_group_axis else shape[axis]

    def in_channels(self, shape: Sequence[int]) -> int:
        return self.channels(shape, self.in_axis)

    def out_channels(self, shape: Sequence[int]) -> int:
        return self.channels(shape, self.out_axis)

    def in_per_group(self, shape: Sequence[int]) -> int:
        """Input channels each group (each filter of a Conv) reads."""
        return shape[self.in_axis] if self.in_axis == self.per_group_axis else shape[self.in_axis] // self.group


def weight_layout(node: onnx.NodeProto, rank: int, slot: int = 1) -> WeightLayout | None:
    """The layout of `node`'s weight of rank `rank` at input `slot` (MatMul: 1 for x @ W, 0 for W @ x); None for
    other ops and for a Gather that is not an embedding lookup (2-D table, axis 0)."""
    op = node.op_type
    bias = 2 if len(node.input) > 2 and node.input[2] else None
    if op == "Conv":
        return WeightLayout(op, 1, out_axis=0, in_axis=1, group=attribute(node, "group", 1), per_group_axis=1,
                            bias=bias)
    if op == "ConvTranspose":
        return WeightLayout(op, 1, out_axis=1, in_axis=0, group=attribute(node, "group", 1), per_group_axis=1,
                            bias=bias)
    if op == "Gemm":
        trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
        out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        return WeightLayout(op, 1, out_axis=out_axis, in_axis=in_axis, bias=bias, x_axis=0 if trans_a else 1,
                            trans_a=trans_a, trans_b=trans_b, alpha=attribute(node, "alpha", 1.0),
                            beta=attribute(node, "beta", 1.0))
    if op == "MatMul" and slot == 1:
        return WeightLayout(op, 1, out_axis=rank - 1, in_axis=rank - 2, x_axis=-1, y_axis=-1)
    if op == "MatMul" and slot == 0:
        return WeightLayout(op, 0, out_axis=rank - 2, in_axis=rank - 1, x_axis=-2, y_axis=-2)
    if op == "Gather" and rank == 2 and attribute(node, "axis", 0) % rank == 0:
        return WeightLayout(op, 0, out_axis=1, in_axis=0, x_axis=None, y_axis=-1)
    return None


def layer_problem(node: onnx.NodeProto, weight_shape: Sequence, input_shape: Sequence | None = None) -> str | None:
    """Why a Conv / ConvTranspose / Gemm node's attributes do not fit its weight (None when they do or for other
    ops): a group below 1 or not dividing the channels, a kernel_shape other than the weight's, strides /
    dilations / pads of another rank or out of range, a weight rank or input channel count that is not the
    input's (`input_shape`, when known)."""
    op = node.op_type
    rank = len(weight_shape)
    if op == "Gemm":
        if rank != 2:
            return f"Gemm weight of rank {rank} (a Gemm weight is 2-D)"
        bad = [a for a in ("transA", "transB") if attribute(node, a, 0) not in (0, 1)]
        return f"{bad[0]}={attribute(node, bad[0])} (must be 0 or 1)" if bad else None
    if op not in ("Conv", "ConvTranspose"):
        return None
    group = attribute(node, "group", 1)
    if not isinstance(group, int) or group < 1:
        return f"group={group} (must be at least 1)"
    if rank < 3:
        return f"{op} weight of rank {rank} (a {op} weight has at least 3 dims)"
    if input_shape is not None and len(input_shape) != rank:
        return f"input of rank {len(input_shape)} for a weight of rank {rank} (they must be equal)"
    spatial = rank - 2
    kernel = attribute(node, "kernel_shape", None)
    if kernel is not None and list(kernel) != list(weight_shape[2:]):
        return f"kernel_shape {list(kernel)} differs from the weight's kernel {list(weight_shape[2:])}"
    for name, count, low in (("strides", spatial, 1), ("dilations", spatial, 1), ("pads", 2 * spatial, 0),
                             ("output_padding", spatial, 0)):
        values = attribute(node, name, None)
        if values is not None and (len(values) != count or any(v < low for v in values)):
            return f"{name}={list(values)} (needs {count} values of at least {low})"
    channels = weight_shape[0]
    if isinstance(channels, int) and channels % group:
        return f"group={group} does not divide the weight's {channels} channels on axis 0"
    if input_shape is not None and isinstance(input_shape[1], int) and isinstance(channels, int):
        reads = weight_shape[1] * group if op == "Conv" else channels
        if input_shape[1] != reads:
            return f"input of {input_shape[1]} channels for a weight that reads {reads}"
    return None
