"""Rules for ops that move, cut, join or re-shape channel axes (index maps)."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.rules_elementwise import merge_aligned
from onnxprune.coupling.walker import Walker, rule
from onnxprune.graph import attribute


@rule("Transpose")
def transpose(w: Walker, i: int, node: onnx.NodeProto) -> None:
    axes = w.tracked(node.input[0])
    perm = attribute(node, "perm") or list(reversed(range(w.rank(node.input[0]))))
    w.set_axes(node.output[0], {k: axes[p] for k, p in enumerate(perm) if p in axes})


def _listed_axes(w: Walker, node: onnx.NodeProto, rank: int) -> list[int] | None:
    listed = attribute(node, "axes")
    if listed is None and len(node.input) > 1 and node.input[1]:
        listed = w.ints(node.input[1])
    return None if listed is None else sorted(a % rank for a in listed)


@rule("Unsqueeze")
def unsqueeze(w: Walker, i: int, node: onnx.NodeProto) -> None:
    out_rank = w.rank(node.output[0])
    new = _listed_axes(w, node, out_rank) if out_rank is not None else None
    if new is None:
        w.block_inputs(i, node, "axes or output rank unknown")
        return
    old_positions = [k for k in range(out_rank) if k not in new]
    w.set_axes(node.output[0], {old_positions[a]: ids for a, ids in w.tracked(node.input[0]).items()})


@rule("Squeeze")
def squeeze(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = w.rank(x)
    gone = _listed_axes(w, node, rank)
    if gone is None:
        shape = w.shape(x)
        gone = [a for a, d in enumerate(shape) if d == 1]
    result = {}
    for a, ids in w.tracked(x).items():
        if a in gone:
            w.block(ids, f"{w.where(i, node)} removes the (size-1) channel axis")
        else:
            result[a - sum(1 for g in gone if g < a)] = ids
    w.set_axes(node.output[0], result)


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


@rule("Split")
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


def slice_params(w: Walker, node: onnx.NodeProto, rank: int) -> list[tuple[int, int, int, int]] | None:
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


@rule("Slice")
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


def _align_blocks(ins: tuple, outs: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input and output dims with equal products: the blocks of a reshape."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        if i < len(ins) and ins[i] == 1 and not (j < len(outs) and outs[j] == 1):
            blocks.append(([i], []))
            i += 1
            continue
        if j < len(outs) and outs[j] == 1 and not (i < len(ins) and ins[i] == 1):
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= len(ins) or j >= len(outs):
            return None
        a, b = ins[i], outs[j]
        if not isinstance(a, int) or not isinstance(b, int):
            if isinstance(a, str) and isinstance(b, str):
                blocks.append(([i], [j]))
                i, j = i + 1, j + 1
                continue
            return None
        bi, bj = [i], [j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b:
                if i >= len(ins) or not isinstance(ins[i], int):
                    return None
                a *= ins[i]
                bi.append(i)
                i += 1
            else:
                if j >= len(outs) or not isinstance(outs[j], int):
                    return None
                b *= outs[j]
                bj.append(j)
                j += 1
        blocks.append((bi, bj))
    return blocks


def map_reshape(w: Walker, i: int, node: onnx.NodeProto, in_shape: tuple, out_shape: tuple) -> None:
    """Element ids through a reshape: splits (channels into heads x dims), merges (flatten), shuffles."""
    axes = w.tracked(node.input[0])
    symbolic_in, symbolic_out = in_shape, out_shape
    blocks = _align_blocks(in_shape, out_shape)
    if blocks is None and not all(isinstance(d, int) for d in in_shape + out_shape):
        # Symbolic dims ('batch', '4*batch') hide the block structure: align the shapes seen in one
        # onnxruntime run instead; channel axes on both sides must still be static (checked below).
        in_seen, out_seen = w.observed_shape(node.input[0]), w.observed_shape(node.output[0])
        if in_seen is not None and out_seen is not None:
            blocks = _align_blocks(in_seen, out_seen)
            in_shape, out_shape = in_seen, out_seen
    if blocks is None:
        w.block_inputs(i, node, f"cannot map channels from shape {list(in_shape)} to {list(out_shape)}")
        return
    result: dict[int, np.ndarray] = {}
    for block_in, block_out in blocks:
        tracked = [a for a in block_in if a in axes]
        if not tracked:
            continue
        if len(tracked) > 1:
            for a in tracked:
                w.block(axes[a], f"{w.where(i, node)} merges two channel axes into one")
            continue
        if not block_out:
            w.block(axes[tracked[0]], f"{w.where(i, node)} drops the channel axis")
            continue
        dims_in = [in_shape[a] for a in block_in]
        dims_out = [out_shape[a] for a in block_out]
        position = block_in.index(tracked[0])
        view = [1] * len(dims_in)
        view[position] = dims_in[position]
        grid = np.broadcast_to(axes[tracked[0]].reshape(view), dims_in).reshape(dims_out)
        single = _single_axis(grid)
        if single is None:
            heads_first = w.options.reshape_channel_axis in (0, -2)
            candidates = [k for k, d in enumerate(dims_out) if d > 1]
            single = candidates[0] if heads_first else candidates[-1]
            moved = np.moveaxis(grid, single, 0).reshape(dims_out[single], -1)
            w.union(np.repeat(moved[:, :1], moved.shape[1] - 1, axis=1), moved[:, 1:])
        if not isinstance(symbolic_in[tracked[0]], int) or not isinstance(symbolic_out[block_out[single]], int):
            w.block(axes[tracked[0]], f"{w.where(i, node)} maps channels onto an axis whose size depends on "
                                      f"the batch ({list(symbolic_in)} to {list(symbolic_out)})")
            continue
        ids = np.moveaxis(grid, single, 0).reshape(dims_out[single], -1)[:, 0]
        result[block_out[single]] = np.ascontiguousarray(ids)
    w.set_axes(node.output[0], result)


def _single_axis(grid: np.ndarray) -> int | None:
    """The axis along which the ids vary, when they depend on one axis only (non-trivial axes first)."""
    for k in sorted(range(grid.ndim), key=lambda axis: grid.shape[axis] == 1):
        index: list = [0] * grid.ndim
        index[k] = slice(None)
        view = [1] * grid.ndim
        view[k] = grid.shape[k]
        if np.array_equal(np.broadcast_to(grid[tuple(index)].reshape(view), grid.shape), grid):
            return k
    return None


@rule("Reshape", "Flatten")
def reshape(w: Walker, i: int, node: onnx.NodeProto) -> None:
    in_shape, out_shape = w.shape(node.input[0]), w.shape(node.output[0])
    if in_shape is None or out_shape is None:
        w.block_inputs(i, node, "input or output shape unknown")
        return
    map_reshape(w, i, node, in_shape, out_shape)


@rule("Expand")
def expand(w: Walker, i: int, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    in_rank, out_rank = w.rank(x), w.rank(out)
    axes = w.tracked(x)
    shift = out_rank - in_rank
    result = {}
    for a, ids in axes.items():
        if w.dim(out, a + shift) != len(ids):
            w.block(ids, f"{w.where(i, node)} broadcasts the channel axis")
        else:
            result[a + shift] = ids
    w.set_axes(out, result)


@rule("Tile")
def tile(w: Walker, i: int, node: onnx.NodeProto) -> None:
    repeats = w.ints(node.input[1])
    axes = w.tracked(node.input[0])
    if repeats is None:
        w.block_inputs(i, node, "repeats are not constant")
        return
    for a, ids in axes.items():
        if repeats[a] != 1:
            w.block(ids, f"{w.where(i, node)} repeats the channel axis")
    w.set_axes(node.output[0], {a: ids for a, ids in axes.items() if repeats[a] == 1})


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


@rule("Resize", "Upsample")
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


@rule("Shape", "Size")
def shape_of(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """Reads dims only; values that depend on them are rewritten where they feed a shape input.

    Shape is frozen to the original dims by surgery; Size counts every element, so its value would change.
    """
    if node.op_type == "Size":
        w.block_inputs(i, node, "the element count it returns includes the channels")
