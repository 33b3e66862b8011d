"""Rules for ops that keep channels in place: unary ops, broadcasting ops, normalisations, pools, mixers."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.registry import rule
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu",
    "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Softplus", "Softsign", "Mish", "Sin", "Cos", "Tan", "Asin",
    "Acos", "Atan", "Sinh", "Cosh", "Floor", "Ceil", "Round", "Reciprocal", "Sign", "Not", "IsNaN", "IsInf",
    "ThresholdedRelu", "Shrink", "Identity", "Cast", "CastLike", "Swish",
)
BROADCASTING = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)
# Reductions for which a masked (zeroed) channel contributes nothing: exact when reduced over channels.
ZERO_NEUTRAL_REDUCTIONS = {"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"}


@rule(*UNARY, "Dropout")
def pass_through(w: Walker, i: int, node: onnx.NodeProto) -> None:
    axes = w.tracked(node.input[0])
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        training = w.resolver.value(node.input[2])
        if training is None or training.any():  # random masks: pruning shifts which elements are dropped
            for ids in axes.values():
                w.inexact(ids, f"{w.where(i, node)} may run in training mode (random, not reproducible)")
    w.set_axes(node.output[0], axes)
    for extra in node.output[1:]:  # e.g. Dropout's mask: same shape, tracked only when read
        if extra and w.used(extra):
            w.set_axes(extra, axes)


@rule("Clip")
def clip(w: Walker, i: int, node: onnx.NodeProto) -> None:
    for slot in (1, 2):  # min/max are scalars; a tracked one would have to vary per channel
        if len(node.input) > slot and w.tracked(node.input[slot]):
            w.block_inputs(i, node, "Clip bounds that vary per channel are not supported")
            return
    w.set_axes(node.output[0], w.tracked(node.input[0]))


@rule(*BROADCASTING)
def broadcasting(w: Walker, i: int, node: onnx.NodeProto) -> None:
    out = node.output[0]
    inputs = [(slot, t) for slot, t in enumerate(node.input) if t]
    out_rank = w.rank(out)
    if out_rank is None:
        ranks = [w.rank(t) for _, t in inputs]
        if any(r is None for r in ranks):
            w.block_inputs(i, node, "input ranks unknown; cannot align broadcast axes")
            return
        out_rank = max(ranks)
    result: dict[int, np.ndarray] = {}
    for k in range(out_rank):
        ids = merge_aligned(w, i, node, inputs, out_rank, k, w.dim(out, k))
        if ids is not None:
            result[k] = ids
    w.set_axes(out, result)


def merge_aligned(w: Walker, i: int, node: onnx.NodeProto, inputs: list[tuple[int, str]], out_rank: int, k: int,
                  out_dim) -> np.ndarray | None:
    """Union the element ids of all inputs on output axis k (numpy broadcasting alignment).

    Constant inputs of full size get sliced along with the channels, and so does (for this node alone) a computed
    input of full size that carries no channels at all (RoPE cos/sin, a position table); a graph input or an input
    whose channels are tracked on other axes fixes the channels (blocked).
    """
    tracked, others = [], []
    for slot, tensor in inputs:
        rank = w.rank(tensor)
        if rank is None:
            if w.tracked(tensor):
                w.block_inputs(i, node, f"rank of input '{tensor}' unknown")
            continue
        axis = k - (out_rank - rank)
        if axis < 0:
            continue
        ids = w.tracked(tensor).get(axis)
        if ids is not None:
            tracked.append(ids)
        else:
            others.append((slot, tensor, axis))
    if not tracked:
        return None
    base = tracked[0]
    n = len(base)
    if any(len(ids) != n for ids in tracked) or (isinstance(out_dim, int) and out_dim != n):
        for ids in tracked:
            w.block(ids, f"{w.where(i, node)}: channels broadcast against a different size")
        return None
    for ids in tracked[1:]:
        w.union(base, ids)
    for slot, tensor, axis in others:
        dim = w.dim(tensor, axis)
        if dim == 1:
            continue
        if w.is_const(tensor) and dim == n:
            w.use_const(i, slot, axis, base)
        elif tensor in w.index.graph_inputs:
            w.block(base, f"{w.where(i, node)}: graph input '{tensor}' is combined with these channels; "
                          "its shape must not change")
        elif dim == n and not w.tracked(tensor):
            w.gather_input(i, slot, axis, base)  # an activation without channels, sliced for this node alone
        else:
            w.block(base, f"{w.where(i, node)}: input '{tensor}' has {dim} entries on the channel axis "
                          "and cannot be sliced (its channels are fixed)")
    return base


@rule("BatchNormalization", "InstanceNormalization")
def per_channel_norm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    axes = w.tracked(x)
    channel = axes.get(1)
    if channel is not None:
        for slot in range(1, len(node.input)):
            if not node.input[slot]:
                continue
            if not w.is_const(node.input[slot]):
                w.block(channel, f"{w.where(i, node)}: parameter '{node.input[slot]}' is not a constant")
                continue
            w.use_const(i, slot, 0, channel, "param")
    if node.op_type == "InstanceNormalization":
        for axis, ids in axes.items():
            if axis >= 2:
                w.inexact(ids, f"{w.where(i, node)} normalises over this axis")
    w.set_axes(node.output[0], axes)
    for extra in node.output[1:]:
        if extra and w.used(extra):
            w.block(channel if channel is not None else np.zeros(0, np.int64),
                    f"{w.where(i, node)}: training-mode statistics outputs are used")


@rule("LayerNormalization")
def layer_norm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    axes = w.tracked(x)
    start = attribute(node, "axis", -1) % rank
    for axis, ids in axes.items():
        if axis < start:
            continue
        w.inexact(ids, f"{w.where(i, node)} normalises over channel axis {axis} (values change when channels go)")
        for slot in (1, 2):
            if len(node.input) <= slot or not node.input[slot]:
                continue
            param = node.input[slot]
            prank = w.rank(param)
            paxis = axis - (rank - prank) if prank is not None else -1
            if paxis < 0 or w.dim(param, paxis) == 1:
                continue
            if w.is_const(param):
                w.use_const(i, slot, paxis, ids, "param")
            else:
                w.block(ids, f"{w.where(i, node)}: scale/bias '{param}' is not a constant")
    w.set_axes(node.output[0], axes)
    for extra in node.output[1:]:
        if extra and w.used(extra):
            w.block_inputs(i, node, "mean/inverse-std outputs are used")


@rule("GroupNormalization")
def group_norm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """Channels of every group are tied by position (same channels leave each group)."""
    axes = dict(w.tracked(node.input[0]))
    channel = axes.get(1)
    if channel is not None:
        groups = int(attribute(node, "num_groups"))
        grid = channel.reshape(groups, -1)
        w.union(np.repeat(grid[:1], groups - 1, axis=0), grid[1:])
        w.inexact(channel, f"{w.where(i, node)} normalises over groups of channels (values change when channels go)")
        for slot in (1, 2):
            param = node.input[slot]
            if w.dim(param, 0) == len(channel):
                if w.is_const(param):
                    w.use_const(i, slot, 0, channel, "param")
                else:
                    w.block(channel, f"{w.where(i, node)}: scale/bias '{param}' is not a constant")
    for axis, ids in axes.items():
        if axis >= 2:
            w.inexact(ids, f"{w.where(i, node)} normalises over axis {axis}")
    w.set_axes(node.output[0], axes)


@rule("LRN")
def lrn(w: Walker, i: int, node: onnx.NodeProto) -> None:
    axes = w.tracked(node.input[0])
    if 1 in axes:
        w.inexact(axes[1], f"{w.where(i, node)} normalises across neighbouring channels")
    w.set_axes(node.output[0], axes)


@rule("MeanVarianceNormalization")
def mvn(w: Walker, i: int, node: onnx.NodeProto) -> None:
    axes = w.tracked(node.input[0])
    for axis in attribute(node, "axes", [0, 2, 3]):
        if axis in axes:
            w.inexact(axes[axis], f"{w.where(i, node)} normalises over channel axis {axis}")
    w.set_axes(node.output[0], axes)


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    axes = w.tracked(x)
    opset = w.resolver.opset
    axis = attribute(node, "axis", -1 if opset >= 13 else 1) % rank
    mixed = [a for a in axes if (a == axis if opset >= 13 else a >= axis)]
    for a in mixed:
        if node.op_type == "Hardmax":
            w.block(axes[a], f"{w.where(i, node)}: argmax over channels changes when channels go")
        else:
            w.inexact(axes[a], f"{w.where(i, node)} normalises over channel axis {a} (values change when channels go)")
    w.set_axes(node.output[0], axes)


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool")
def pool(w: Walker, i: int, node: onnx.NodeProto) -> None:
    axes = w.tracked(node.input[0])
    kept = {a: ids for a, ids in axes.items() if a <= 1}
    for a, ids in axes.items():
        if a > 1:
            w.block(ids, f"{w.where(i, node)} pools over axis {a}, which carries channels")
    w.set_axes(node.output[0], kept)
    if len(node.output) > 1 and node.output[1] and w.used(node.output[1]):
        w.block_inputs(i, node, "MaxPool indices encode channel positions")


@rule("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")
def reduce(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    axes = w.tracked(x)
    if node.op_type in ("ArgMax", "ArgMin"):
        reduced = [attribute(node, "axis", 0) % rank]
    else:
        listed = attribute(node, "axes")
        if listed is None and len(node.input) > 1 and node.input[1]:
            listed = w.ints(node.input[1])
            if listed is None:
                w.block_inputs(i, node, "reduction axes are not constant")
                return
        if not listed:
            listed = [] if attribute(node, "noop_with_empty_axes", 0) else list(range(rank))
        reduced = sorted(a % rank for a in listed)
    keep = attribute(node, "keepdims", 1)
    result = {}
    for a, ids in axes.items():
        if a in reduced:
            if node.op_type in ("ArgMax", "ArgMin"):
                w.block(ids, f"{w.where(i, node)}: the indices it returns count channels")
            elif node.op_type not in ZERO_NEUTRAL_REDUCTIONS:
                w.inexact(ids, f"{w.where(i, node)} reduces over channel axis {a} (values change when channels go)")
            continue
        result[a if keep else a - sum(1 for r in reduced if r < a)] = ids
    w.set_axes(node.output[0], result)


@rule("QuantizeLinear", "DequantizeLinear")
def quantize(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    axes = w.tracked(x)
    axis = attribute(node, "axis", 1) % max(w.rank(x) or 1, 1)
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot] and (w.rank(node.input[slot]) or 0) == 1 \
                and w.dim(node.input[slot], 0) not in (1, None) and axis in axes:
            w.use_const(i, slot, 0, axes[axis], "param")
    w.set_axes(node.output[0], axes)
