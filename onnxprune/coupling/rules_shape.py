"""Rules for ops that move or re-shape channel axes (index maps), with their rewrites."""
from __future__ import annotations

import math

import numpy as np
import onnx

from onnxprune.coupling.registry import RewriteContext, rule
from onnxprune.coupling.tracker import MAX_TRACKED
from onnxprune.coupling.walker import Walker
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
        if math.prod(dims_in) > MAX_TRACKED:  # the id grid below has one entry per element of the block
            w.block(axes[tracked[0]], f"{w.where(i, node)} maps a block of {math.prod(dims_in)} elements "
                                      f"(dims {dims_in}), more than onnxprune tracks ({MAX_TRACKED})")
            continue
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


def rewrite_reshape(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """The target shape follows the new channel counts (a -1 entry stays -1)."""
    out = node.output[0]
    if out not in s.kept or node.op_type == "Flatten":
        return
    new_shape = s.new_shape(out)
    current = s.ints(node.input[1])
    positions = {}
    for axis in s.kept[out]:
        if current is not None and current[axis] == -1:
            continue
        positions[axis] = int(new_shape[axis])
    s.set_int_input(node, 1, positions, nodes)


@rule("Reshape", "Flatten", rewrite=rewrite_reshape)
def reshape(w: Walker, i: int, node: onnx.NodeProto) -> None:
    in_shape, out_shape = w.shape(node.input[0]), w.shape(node.output[0])
    if in_shape is None or out_shape is None:
        w.block_inputs(i, node, "input or output shape unknown")
        return
    map_reshape(w, i, node, in_shape, out_shape)


def rewrite_expand(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """The target shape follows the new channel counts where it is not a broadcast 1."""
    out = node.output[0]
    if out not in s.kept:
        return
    current = s.ints(node.input[1])
    length = len(current) if current is not None else s.shape(node.input[1])[0]
    shift = len(s.shape(out)) - length
    positions = {}
    for axis in s.kept[out]:
        k = axis - shift
        if k >= 0 and (current is None or current[k] != 1):
            positions[k] = s.new_dim(out, axis)
    s.set_int_input(node, 1, positions, nodes)


@rule("Expand", rewrite=rewrite_expand)
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


def freeze_shape(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """Shape of a shrunk tensor reports its ORIGINAL channel counts.

    Values computed from shapes (attention's 1/sqrt(head_dim), a view's C // heads) keep the
    original's meaning; every shape input that must follow the new sizes (Reshape, Expand,
    Split, Slice, Resize) is rewritten explicitly.
    """
    x = node.input[0]
    changed = s.kept.get(x) or s.sliced_in_place.get(x)
    if not changed:
        return
    shape = s.shape(x)
    axes = list(range(len(shape)))[attribute(node, "start", 0):attribute(node, "end")]  # clipped as Shape does
    positions = {k: int(shape[a]) for k, a in enumerate(axes) if a in changed}
    if not positions:
        return
    raw = s.fresh(f"{node.output[0]}_pruned")
    frozen = node.output[0]
    node.output[0] = raw
    mask = np.zeros(len(axes), dtype=bool)
    values = np.zeros(len(axes), dtype=np.int64)
    for k, v in positions.items():
        mask[k], values[k] = True, v
    mask_name = s.add_initializer(f"{frozen}_mask", mask)
    values_name = s.add_initializer(f"{frozen}_original", values)
    s.place_after(i, [onnx.helper.make_node("Where", [mask_name, values_name, raw], [frozen],
                                            name=s.fresh(f"{node.name or 'Shape'}_original_dims"))])


@rule("Size")
@rule("Shape", rewrite=freeze_shape)
def shape_of(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """Reads dims only; values that depend on them are rewritten where they feed a shape input.

    Shape is frozen to the original dims by surgery; Size counts every element, so its value would change.
    """
    if node.op_type == "Size":
        w.block_inputs(i, node, "the element count it returns includes the channels")
