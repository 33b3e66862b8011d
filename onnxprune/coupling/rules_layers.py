"""Rules for layers with constant weights: they consume input channels and produce new ones."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.rules_elementwise import merge_aligned
from onnxprune.coupling.registry import RewriteContext, rule, set_attribute
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute


def _require_constant(w: Walker, i: int, node: onnx.NodeProto, slots: tuple[int, ...]) -> bool:
    for slot in slots:
        if len(node.input) > slot and node.input[slot] and not w.is_const(node.input[slot]):
            w.block_inputs(i, node, f"input '{node.input[slot]}' is not a constant weight")
            return False
    return True


def _only_channel_axis(w: Walker, i: int, node: onnx.NodeProto, axes: dict[int, np.ndarray], allowed: set[int]) -> None:
    for axis, ids in axes.items():
        if axis not in allowed:
            w.block(ids, f"{w.where(i, node)} mixes axis {axis}, which carries channels")


def _tie_rows(w: Walker, grid: np.ndarray) -> None:
    """Union every row of a (groups, width) id grid with the first row: same positions in every group."""
    if grid.shape[0] > 1:
        w.union(np.repeat(grid[:1], grid.shape[0] - 1, axis=0), grid[1:])


def rewrite_conv_group(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """A depthwise conv keeps one group per remaining channel (other group counts stay)."""
    groups = attribute(node, "group", 1)
    x = node.input[0]
    if groups == 1 or 1 not in s.kept.get(x, {}):
        return
    weight_shape = s.shape(s.original(i).input[1])  # the original name: the copy may read a sliced one
    cin_per_group = weight_shape[1] if node.op_type == "Conv" else weight_shape[0] // groups
    if cin_per_group == 1:  # depthwise: one group per remaining channel
        set_attribute(node, onnx.helper.make_attribute("group", int(s.new_dim(x, 1))))


@rule("Conv", rewrite=rewrite_conv_group)
def conv(w: Walker, i: int, node: onnx.NodeProto) -> None:
    if not _require_constant(w, i, node, (1, 2)):
        return
    x, weight = node.input[0], node.input[1]
    cout, cin_per_group = w.shape(weight)[:2]
    groups = attribute(node, "group", 1)
    axes = w.tracked(x)
    _only_channel_axis(w, i, node, axes, {1})
    xin = axes.get(1)
    if groups == 1:
        if xin is not None:
            w.use_const(i, 1, 1, xin, "in")
        out = w.new_channels(cout, i)
    elif cin_per_group == 1:  # depthwise (channel multiplier cout/groups): whole groups go
        if xin is None:
            out = w.fixed_channels(cout, i, f"{w.where(i, node)}: depthwise conv over channels that cannot change")
        else:
            out = np.repeat(xin, cout // groups)
    else:  # grouped: the same positions leave every group, the group count stays
        if xin is not None:
            grid = xin.reshape(groups, cin_per_group)
            _tie_rows(w, grid)
            w.use_const(i, 1, 1, grid[0], "in")
        out = np.tile(w.new_channels(cout // groups, i), groups)
    w.use_const(i, 1, 0, out, "out")
    if len(node.input) > 2 and node.input[2]:
        w.use_const(i, 2, 0, out, "bias")
    w.set_axes(node.output[0], {1: out})
    w.layer_out[i] = out


@rule("ConvTranspose", rewrite=rewrite_conv_group)
def conv_transpose(w: Walker, i: int, node: onnx.NodeProto) -> None:
    if not _require_constant(w, i, node, (1, 2)):
        return
    x, weight = node.input[0], node.input[1]
    cin, cout_per_group = w.shape(weight)[:2]
    groups = attribute(node, "group", 1)
    axes = w.tracked(x)
    _only_channel_axis(w, i, node, axes, {1})
    xin = axes.get(1)
    if groups == 1:
        if xin is not None:
            w.use_const(i, 1, 0, xin, "in")
        out = w.new_channels(cout_per_group, i)
        w.use_const(i, 1, 1, out, "out")
    elif cin // groups == 1:  # depthwise: whole groups go
        if xin is None:
            out = w.fixed_channels(cout_per_group * groups, i,
                                   f"{w.where(i, node)}: depthwise conv over channels that cannot change")
        else:
            w.use_const(i, 1, 0, xin, "out")
            out = np.repeat(xin, cout_per_group)
    else:
        if xin is not None:
            _tie_rows(w, xin.reshape(groups, cin // groups))
            w.use_const(i, 1, 0, xin, "in")
        per_group = w.new_channels(cout_per_group, i)
        w.use_const(i, 1, 1, per_group, "out")
        out = np.tile(per_group, groups)
    if len(node.input) > 2 and node.input[2]:
        w.use_const(i, 2, 0, out, "bias")
    w.set_axes(node.output[0], {1: out})
    w.layer_out[i] = out


@rule("Gemm")
def gemm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    if not _require_constant(w, i, node, (1,)):
        return
    a, b = node.input[0], node.input[1]
    trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
    axes = w.tracked(a)
    k_axis = 0 if trans_a else 1
    _only_channel_axis(w, i, node, axes, {k_axis})
    b_k, b_n = (1, 0) if trans_b else (0, 1)
    if k_axis in axes:
        w.use_const(i, 1, b_k, axes[k_axis], "in")
    out = w.new_channels(w.shape(b)[b_n], i)
    w.use_const(i, 1, b_n, out, "out")
    if len(node.input) > 2 and node.input[2]:
        c = node.input[2]
        c_rank = w.rank(c)
        c_axes = w.tracked(c)
        if c_rank and c_rank - 1 in c_axes:
            w.union(out, c_axes[c_rank - 1])
        elif c_rank and w.dim(c, c_rank - 1) not in (1, None):
            if w.is_const(c):
                w.use_const(i, 2, c_rank - 1, out, "bias")
            else:
                w.block(out, f"{w.where(i, node)}: C input '{c}' is not a constant")
        for axis, ids in c_axes.items():
            if axis != c_rank - 1:
                w.block(ids, f"{w.where(i, node)}: C input carries channels on its row axis")
    w.set_axes(node.output[0], {1: out})
    w.layer_out[i] = out


@rule("MatMul")
def matmul(w: Walker, i: int, node: onnx.NodeProto) -> None:
    a, b = node.input[0], node.input[1]
    ra, rb = w.rank(a), w.rank(b)
    if ra is None or rb is None or ra < 2 or rb < 2:
        w.block_inputs(i, node, "MatMul with a 1-D or unknown-rank operand is not supported")
        return
    r = max(ra, rb)
    ta, tb = w.tracked(a), w.tracked(b)
    const_a, const_b = w.is_const(a), w.is_const(b)
    result: dict[int, np.ndarray] = {}
    if const_b and not const_a:
        if ra - 1 in ta:
            w.use_const(i, 1, rb - 2, ta[ra - 1], "in")
        out = w.new_channels(w.shape(b)[-1], i)
        w.use_const(i, 1, rb - 1, out, "out")
        result[r - 1] = out
        w.layer_out[i] = out
        if ra - 2 in ta:
            result[r - 2] = ta[ra - 2]
    elif const_a and not const_b:
        if rb - 2 in tb:
            w.use_const(i, 0, ra - 1, tb[rb - 2], "in")
        out = w.new_channels(w.shape(a)[-2], i)
        w.use_const(i, 0, ra - 2, out, "out")
        result[r - 2] = out
        w.layer_out[i] = out
        if rb - 1 in tb:
            result[r - 1] = tb[rb - 1]
    else:  # two activations (attention): the contracted axis couples both operands
        ka, kb = ta.get(ra - 1), tb.get(rb - 2)
        if ka is not None and kb is not None:
            w.union(ka, kb)
        elif ka is not None or kb is not None:
            w.block(ka if ka is not None else kb,
                    f"{w.where(i, node)}: contracted axis carries channels on one operand only")
        if ra - 2 in ta:
            result[r - 2] = ta[ra - 2]
        if rb - 1 in tb:
            result[r - 1] = tb[rb - 1]
    inputs = [(0, a), (1, b)]
    for k in range(r - 2):
        ids = merge_aligned(w, i, node, inputs, r, k, w.dim(node.output[0], k))
        if ids is not None:
            result[k] = ids
    w.set_axes(node.output[0], result)


@rule("Gather")
def gather(w: Walker, i: int, node: onnx.NodeProto) -> None:
    data, indices = node.input[0], node.input[1]
    rank = w.rank(data)
    axis = attribute(node, "axis", 0) % rank
    index_rank = w.rank(indices)
    if w.is_const(data) and not w.is_const(indices):
        if axis == 0 and rank == 2 and not w.tracked(indices):  # embedding table (vocab, dim)
            out = w.new_channels(w.shape(data)[1], i)
            w.use_const(i, 0, 1, out, "out")
            w.set_axes(node.output[0], {index_rank: out})
            w.layer_out[i] = out
        else:
            w.block_inputs(i, node, "Gather of a constant other than an embedding table")
        return
    if w.tracked(indices):
        w.block_inputs(i, node, "Gather indices carry channels")
        return
    result = {}
    for a, ids in w.tracked(data).items():
        if a == axis:
            w.block(ids, f"{w.where(i, node)} picks entries along the channel axis")
        else:
            result[a if a < axis else a + index_rank - 1] = ids
    w.set_axes(node.output[0], result)
