"""Rules for layers with constant weights: they consume input channels and produce new ones."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.rules_elementwise import merge_aligned
from onnxprune.coupling.registry import RewriteContext, rule, set_attribute
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute
from onnxprune.layout import WeightLayout, weight_layout


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


def _conv_input(w: Walker, i: int, node: onnx.NodeProto) -> tuple[WeightLayout, tuple, np.ndarray | None] | None:
    """A Conv / ConvTranspose's weight layout, weight shape and input channel ids (None: it cannot be pruned)."""
    if not _require_constant(w, i, node, (1, 2)):
        return None
    shape = w.shape(node.input[1])
    lay = weight_layout(node, len(shape))
    axes = w.tracked(node.input[0])
    _only_channel_axis(w, i, node, axes, {lay.x_axis})
    return lay, shape, axes.get(lay.x_axis)


def _conv_output(w: Walker, i: int, node: onnx.NodeProto, lay: WeightLayout, out: np.ndarray) -> None:
    if lay.bias is not None:
        w.use_const(i, lay.bias, 0, out, "bias")
    w.set_axes(node.output[0], {lay.y_axis: out})
    w.layer_out[i] = out



def rewrite_conv_group(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """A depthwise conv keeps one group per remaining channel (other group counts stay)."""
    x = node.input[0]
    weight_shape = s.shape(s.original(i).input[1])  # the original name: the copy may read a sliced one
    lay = weight_layout(node, len(weight_shape))
    if lay.group == 1 or 1 not in s.kept.get(x, {}):
        return
    if lay.in_per_group(weight_shape) == 1:  # depthwise: one group per remaining channel
        set_attribute(node, onnx.helper.make_attribute("group", int(s.new_dim(x, 1))))


@rule("Conv", rewrite=rewrite_conv_group)
def conv(w: Walker, i: int, node: onnx.NodeProto) -> None:
    found = _conv_input(w, i, node)
    if found is None:
        return
    lay, shape, xin = found
    cout, cin_per_group, groups = shape[lay.out_axis], lay.in_per_group(shape), lay.group
    if groups == 1:
        if xin is not None:
            w.use_const(i, 1, lay.in_axis, xin, "in")
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
            w.use_const(i, 1, lay.in_axis, grid[0], "in")
        out = np.tile(w.new_channels(cout // groups, i), groups)
    w.use_const(i, 1, lay.out_axis, out, "out")
    _conv_output(w, i, node, lay, out)


@rule("ConvTranspose", rewrite=rewrite_conv_group)
def conv_transpose(w: Walker, i: int, node: onnx.NodeProto) -> None:
    found = _conv_input(w, i, node)
    if found is None:
        return
    lay, shape, xin = found
    cout_per_group, groups = shape[lay.out_axis], lay.group
    if groups == 1:
        if xin is not None:
            w.use_const(i, 1, lay.in_axis, xin, "in")
        out = w.new_channels(cout_per_group, i)
        w.use_const(i, 1, lay.out_axis, out, "out")
    elif lay.in_per_group(shape) == 1:  # depthwise: whole groups go
        if xin is None:
            out = w.fixed_channels(cout_per_group * groups, i,
                                   f"{w.where(i, node)}: depthwise conv over channels that cannot change")
        else:
            w.use_const(i, 1, lay.in_axis, xin, "out")
            out = np.repeat(xin, cout_per_group)
    else:
        if xin is not None:
            _tie_rows(w, xin.reshape(groups, lay.in_per_group(shape)))
            w.use_const(i, 1, lay.in_axis, xin, "in")
        per_group = w.new_channels(cout_per_group, i)
        w.use_const(i, 1, lay.out_axis, per_group, "out")
        out = np.tile(per_group, groups)
    _conv_output(w, i, node, lay, out)


@rule("Gemm")
def gemm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    if not _require_constant(w, i, node, (1,)):
        return
    a, b = node.input[0], node.input[1]
    lay = weight_layout(node, 2)
    axes = w.tracked(a)
    k_axis = lay.x_axis
    _only_channel_axis(w, i, node, axes, {k_axis})
    if k_axis in axes:
        w.use_const(i, 1, lay.in_axis, axes[k_axis], "in")
    out = w.new_channels(w.shape(b)[lay.out_axis], i)
    w.use_const(i, 1, lay.out_axis, out, "out")
    if lay.bias is not None:
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
    w.set_axes(node.output[0], {lay.y_axis: out})
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
    if const_a != const_b:  # one constant weight: x @ W (slot 1) or W @ x (slot 0)
        slot = 1 if const_b else 0
        tx, rx = (ta, ra) if const_b else (tb, rb)
        lay = weight_layout(node, rb if const_b else ra, slot)
        if rx + lay.x_axis in tx:
            w.use_const(i, slot, lay.in_axis, tx[rx + lay.x_axis], "in")
        out = w.new_channels(w.shape(node.input[slot])[lay.out_axis], i)
        w.use_const(i, slot, lay.out_axis, out, "out")
        result[r + lay.y_axis] = out
        w.layer_out[i] = out
        through = -3 - lay.x_axis  # the activation's other matrix axis (rows of x @ W, columns of W @ x)
        if rx + through in tx:
            result[r + through] = tx[rx + through]
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
        lay = weight_layout(node, rank, 0)
        if lay is not None and not w.tracked(indices):  # embedding table (vocab, dim)
            out = w.new_channels(w.shape(data)[lay.out_axis], i)
            w.use_const(i, lay.slot, lay.out_axis, out, "out")
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
