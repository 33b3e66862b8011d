"""Rules for ops that cut, join or pad channel axes (Concat, Split, Slice, Pad, Resize), with their rewrites."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.registry import RewriteContext, rule, set_attribute
from onnxprune.coupling.rules_elementwise import merge_aligned
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute


@rule("Concat")
def concat(w: Walker, i: int, node: onnx.NodeProto) -> None:
    out = node.output[0]
    rank = w.rank(out)
    axis = attribute(node, "axis") % rank
    inputs = [(slot, t) for slot, t in enumerate(node.input) if t]
    result: dict[int, np.ndarray] = {}
    pieces = []
    any_tracked = False
    for slot, tensor in inputs:
        ids = w.tracked(tensor).get(axis)
        size = w.dim(tensor, axis)
        if ids is None:
            if not isinstance(size, int):
                w.block_inputs(i, node, f"input '{tensor}' has an unknown size on the concat axis")
                return
            pieces.append((slot, tensor, size))
        else:
            any_tracked = True
            pieces.append((slot, tensor, ids))
    if any_tracked:
        joined = []
        for slot, tensor, piece in pieces:
            if isinstance(piece, int):
                piece = w.fixed_channels(piece, i, f"{w.where(i, node)}: input '{tensor}' joins fixed channels")
            joined.append(piece)
        result[axis] = np.concatenate(joined)
    for k in range(rank):
        if k != axis:
            ids = merge_aligned(w, i, node, inputs, rank, k, w.dim(out, k))
            if ids is not None:
                result[k] = ids
    w.set_axes(out, result)


def split_sizes(w: Walker, node: onnx.NodeProto, total: int) -> list[int] | None:
    """Sizes of the pieces of a Split, from the attribute, the input, or an even split."""
    sizes = attribute(node, "split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = w.ints(node.input[1])
        if sizes is None:
            return None
    if sizes is None:
        parts = attribute(node, "num_outputs") or len(node.output)
        chunk = -(-total // parts)
        sizes = [min(chunk, total - k * chunk) for k in range(parts)]
    return list(sizes)


def rewrite_split(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """Piece sizes follow the new channel counts (attribute, or a sizes input from opset 13)."""
    x = node.input[0]
    rank = len(s.shape(x))
    axis = attribute(node, "axis", 0) % rank
    if axis not in s.kept.get(x, {}):
        return
    sizes = [int(s.new_dim(out, axis)) for out in node.output]
    if any(a.name == "split" for a in node.attribute):
        set_attribute(node, onnx.helper.make_attribute("split", sizes))
        return
    if s.opset < 13:
        node.attribute.append(onnx.helper.make_attribute("split", sizes))
        return
    kept_attrs = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept_attrs)
    name = s.add_initializer(f"{node.name or 'Split'}_sizes", np.array(sizes, dtype=np.int64))
    if len(node.input) > 1:
        node.input[1] = name
    else:
        node.input.append(name)


@rule("Split", rewrite=rewrite_split)
def split(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    axis = attribute(node, "axis", 0) % rank
    axes = w.tracked(x)
    ids = axes.get(axis)
    sizes = split_sizes(w, node, w.dim(x, axis)) if ids is not None else None
    if ids is not None and (sizes is None or sum(sizes) != len(ids)):
        w.block_inputs(i, node, "split sizes are unknown")
        return
    offset = 0
    for k, out in enumerate(node.output):
        result = {a: v for a, v in axes.items() if a != axis}
        if ids is not None:
            result[axis] = ids[offset : offset + sizes[k]]
            offset += sizes[k]
        w.set_axes(out, result)


def slice_params(w: Walker | RewriteContext, node: onnx.NodeProto, rank: int) -> list[tuple[int, int, int, int]] | None:
    """(axis, start, end, step) per sliced axis, or None when they are not constant."""
    if len(node.input) == 1:  # opset < 10: attributes
        starts, ends = attribute(node, "starts"), attribute(node, "ends")
        axes = attribute(node, "axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = w.ints(node.input[1]), w.ints(node.input[2])
        if starts is None or ends is None:
            return None
        axes = w.ints(node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
        steps = w.ints(node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
        if axes is None or steps is None:
            return None
    return [(a % rank, s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)]


def rewrite_slice(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """Bounds on a pruned axis move to the kept positions; a strided one becomes a Gather."""
    x = node.input[0]
    kept = s.kept.get(x, {})
    if not kept:
        return
    shape = s.shape(x)
    params = slice_params(s, node, len(shape))
    if len(params) == 1 and params[0][3] != 1 and params[0][0] in kept:
        _strided_slice_as_gather(s, node, params[0], shape[params[0][0]], kept[params[0][0]])
        return
    starts, ends = [], []
    changed = False
    for axis, start, end, step in params:
        if axis in kept:
            size = shape[axis]
            lo, hi, _ = slice(start, end, step).indices(size)
            positions = kept[axis]
            start = int(np.searchsorted(positions, lo))
            end = int(np.searchsorted(positions, max(hi, lo)))
            changed = True
        starts.append(start)
        ends.append(end)
    if not changed:
        return
    if len(node.input) == 1:
        set_attribute(node, onnx.helper.make_attribute("starts", starts))
        set_attribute(node, onnx.helper.make_attribute("ends", ends))
        return
    for slot, values in ((1, starts), (2, ends)):
        name = s.add_initializer(f"{node.name or 'Slice'}_{'starts' if slot == 1 else 'ends'}",
                                 np.array(values, dtype=np.int64))
        node.input[slot] = name


def _strided_slice_as_gather(s: RewriteContext, node: onnx.NodeProto, param: tuple, size: int,
                             kept: np.ndarray) -> None:
    """A strided Slice over pruned channels becomes a Gather of the kept ones' new positions."""
    axis, start, end, step = param
    picked = np.arange(size)[slice(start, end, step)]
    new_position = {int(p): k for k, p in enumerate(kept)}
    indices = np.array([new_position[int(p)] for p in picked if int(p) in new_position], dtype=np.int64)
    name = s.add_initializer(f"{node.name or 'Slice'}_indices", indices)
    data = node.input[0]
    del node.input[:]
    node.input.extend([data, name])
    del node.attribute[:]
    node.attribute.append(onnx.helper.make_attribute("axis", axis))
    node.op_type = "Gather"


@rule("Slice", rewrite=rewrite_slice)
def slice_(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    axes = dict(w.tracked(x))
    params = slice_params(w, node, rank)
    if params is None:
        w.block_inputs(i, node, "slice bounds are not constant")
        return
    for axis, start, end, step in params:
        if axis not in axes:
            continue
        if step != 1 and len(params) > 1:
            w.block(axes[axis], f"{w.where(i, node)} slices the channel axis with step {step} together with "
                                "other axes")
            del axes[axis]
            continue
        axes[axis] = axes[axis][slice(start, end, step)]
    w.set_axes(node.output[0], axes)


@rule("Pad")
def pad(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    pads = attribute(node, "pads") if len(node.input) < 2 else w.ints(node.input[1])
    pad_axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        pad_axes = [a % rank for a in (w.ints(node.input[3]) or [])]
    if pads is None:
        w.block_inputs(i, node, "pads are not constant")
        return
    axes = dict(w.tracked(x))
    n = len(pad_axes)
    for k, a in enumerate(pad_axes):
        if a in axes and (pads[k] != 0 or pads[k + n] != 0):
            w.block(axes.pop(a), f"{w.where(i, node)} pads the channel axis")
    w.set_axes(node.output[0], axes)


def rewrite_resize(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """Explicit output sizes follow the new channel counts."""
    out = node.output[0]
    if out not in s.kept or node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
        return
    s.set_int_input(node, 3, {axis: s.new_dim(out, axis) for axis in s.kept[out]}, nodes)


@rule("Resize", "Upsample", rewrite=rewrite_resize)
def resize(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    in_shape, out_shape = w.shape(x), w.shape(out)
    axes = dict(w.tracked(x))
    if node.op_type == "Resize" and attribute(node, "axes") is not None:
        w.block_inputs(i, node, "Resize with an `axes` attribute is not supported")
        return
    for a in list(axes):
        if in_shape is None or out_shape is None or in_shape[a] != out_shape[a]:
            w.block(axes.pop(a), f"{w.where(i, node)} resizes the channel axis")
    w.set_axes(out, axes)
