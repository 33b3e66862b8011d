"""Rules for onnxruntime's fused attention ops (com.microsoft): Attention (packed QKV weight), MultiHeadAttention,
GroupQueryAttention and RotaryEmbedding; their rewrites set `num_heads`, `kv_num_heads`, `qkv_hidden_sizes` and
`scale` to the new sizes.

What one pruning unit is follows `Options.reshape_channel_axis` as at a Reshape into heads: whole heads (0 / -2) or
the same dims inside every head (-1 / 1). Head dims of Q and K contract inside a packed Attention (no tensor holds
them), so pruning them there changes values: that group is inexact. GroupQueryAttention always prunes whole KV
groups (a KV head and the query heads that read it): its single head size ties Q, K and V dims together.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from onnxprune.coupling.registry import RewriteContext, rule, set_attribute
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute

MS = "com.microsoft"


def _whole_heads(w: Walker) -> bool:
    return w.options.reshape_channel_axis in (0, -2)


def _only_last_axis(w: Walker, i: int, node: onnx.NodeProto, tensor: str) -> np.ndarray | None:
    """The ids on a tensor's last axis; channels on any other axis are blocked."""
    rank = w.rank(tensor)
    found = None
    for axis, ids in w.tracked(tensor).items():
        if rank is not None and axis == rank - 1:
            found = ids
        else:
            w.block(ids, f"{w.where(i, node)}: input '{tensor}' carries channels on axis {axis}")
    return found


def _qkv_channels(w: Walker, i: int, node: onnx.NodeProto, tensors: tuple[str, str, str],
                  purpose: str) -> list[np.ndarray] | None:
    """The channel ids of query, key and value (last axis each), or None after blocking those that carry any:
    `purpose` (e.g. "prune heads") needs all three."""
    ids = [_only_last_axis(w, i, node, t) for t in tensors]
    if all(x is not None for x in ids):
        return ids
    for x in ids:
        if x is not None:
            w.block(x, f"{w.where(i, node)}: query, key and value must all carry channels to {purpose}")
    return None


def _unused_or_block(w: Walker, i: int, node: onnx.NodeProto, slots: tuple[int, ...], outputs: tuple[int, ...],
                     what: str) -> bool:
    """False (and the node's inputs blocked) when an optional input of `slots` is given or an output is read."""
    given = [node.input[s] for s in slots if len(node.input) > s and node.input[s]]
    read = [node.output[k] for k in outputs if len(node.output) > k and w.used(node.output[k])]
    if given or read:
        w.block_inputs(i, node, f"{what} ({', '.join(given + read)}) hold per-head state whose shape must not change")
        return False
    return True


def _per_head(w: Walker, ids: np.ndarray, heads: int) -> np.ndarray:
    """Union every head's elements into one unit; returns the (heads, dim) grid."""
    grid = ids.reshape(heads, -1)
    if grid.shape[1] > 1:
        w.union(np.repeat(grid[:, :1], grid.shape[1] - 1, axis=1), grid[:, 1:])
    return grid


def _per_dim(w: Walker, ids: np.ndarray, heads: int) -> np.ndarray:
    """Union the same dim of every head into one unit; returns the (heads, dim) grid."""
    grid = ids.reshape(heads, -1)
    if heads > 1:
        w.union(np.repeat(grid[:1], heads - 1, axis=0), grid[1:])
    return grid


def _heads_kept(kept: np.ndarray | None, head_size: int, heads: int) -> int:
    """Heads left when `kept` (positions on a (heads x head_size) axis, None: all) remain."""
    return heads if kept is None else len(np.unique(np.asarray(kept) // head_size))


def _keep_scale(node: onnx.NodeProto, head_size: int, new_head_size: int) -> None:
    """A default 1/sqrt(head size) scale is written out when the head size changes (values must not)."""
    if new_head_size != head_size and not attribute(node, "scale", 0.0):
        set_attribute(node, onnx.helper.make_attribute("scale", 1.0 / math.sqrt(head_size)))


# --------------------------------------------------------------------------- Attention (packed QKV weight)

def _attention_sizes(w_or_s, node: onnx.NodeProto) -> tuple[int, int, int, int]:
    heads = int(attribute(node, "num_heads"))
    sizes = attribute(node, "qkv_hidden_sizes")
    if not sizes:
        total = w_or_s.shape(node.input[1])[1]
        sizes = [total // 3] * 3
    return heads, int(sizes[0]), int(sizes[1]), int(sizes[2])


def rewrite_attention(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    heads, hq, hk, hv = _attention_sizes(s, s.original(i))
    kept = s.const_kept(i, 1).get(1)
    if kept is None:
        return
    q, k = int((kept < hq).sum()), int(((kept >= hq) & (kept < hq + hk)).sum())
    v = len(kept) - q - k
    new_heads = _heads_kept(kept[kept < hq], hq // heads, heads)
    set_attribute(node, onnx.helper.make_attribute("num_heads", new_heads))
    set_attribute(node, onnx.helper.make_attribute("qkv_hidden_sizes", [q, k, v]))
    _keep_scale(node, hq // heads, q // new_heads)


@rule("Attention", domain=MS, rewrite=rewrite_attention, source=True)
def attention(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """input [B, S, in] @ weight [in, Q + K + V] (+ bias): heads of Q, K and V, then the output [B, S, V]."""
    x, weight = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 else ""
    if not w.is_const(weight) or (bias and not w.is_const(bias)):
        w.block_inputs(i, node, "the packed QKV weight or bias is not a constant")
        return
    if not _unused_or_block(w, i, node, (4, 5), (1,), "past state / attention bias"):
        return
    heads, hq, hk, hv = _attention_sizes(w, node)
    xin = _only_last_axis(w, i, node, x)
    if xin is not None:
        w.use_const(i, 1, 0, xin, "in")
    dq, dk, dv = hq // heads, hk // heads, hv // heads
    if _whole_heads(w):
        units = w.new_channels(heads, i)
        columns = np.concatenate([np.repeat(units, dq), np.repeat(units, dk), np.repeat(units, dv)])
        out = np.repeat(units, dv)
    else:
        qk = w.new_channels(dq, i)
        w.inexact(qk, f"{w.where(i, node)}: Q/K head dims contract inside the fused op (scores change when "
                      "they go; prune whole heads with reshape_channel_axis=0 for an exact group)")
        v = w.new_channels(dv, i)
        columns = np.concatenate([np.tile(qk, heads), np.tile(qk, heads), np.tile(v, heads)])
        out = np.tile(v, heads)
    w.use_const(i, 1, 1, columns, "out")
    if bias:
        w.use_const(i, 2, 0, columns, "bias")
    w.set_axes(node.output[0], {w.rank(node.output[0]) - 1: out})
    w.layer_out[i] = out


# --------------------------------------------------------------------------- MultiHeadAttention

def rewrite_mha(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    original = s.original(i)
    heads = int(attribute(original, "num_heads"))
    query = original.input[0]
    shape = s.shape(query)
    head_size = shape[-1] // heads
    kept = s.kept.get(query, {}).get(len(shape) - 1)
    new_heads = _heads_kept(kept, head_size, heads)
    set_attribute(node, onnx.helper.make_attribute("num_heads", new_heads))
    _keep_scale(node, head_size, int(s.new_dim(query, len(shape) - 1)) // new_heads)


@rule("MultiHeadAttention", domain=MS, rewrite=rewrite_mha)
def multi_head_attention(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """query [B, S, Q], key [B, L, K], value [B, L, V] (+ bias [Q + K + V]) -> output [B, S, V]."""
    names = list(node.input) + [""] * 3
    query, key, value = names[0], names[1], names[2]
    if not key or not value or any(w.rank(t) != 3 for t in (query, key, value)):
        w.block_inputs(i, node, "packed QKV / KV or per-head (4-D) key and value are not supported")
        return
    if not _unused_or_block(w, i, node, (5, 6, 7), (1, 2), "past key/value, attention bias or present outputs"):
        return
    heads = int(attribute(node, "num_heads"))
    ids = _qkv_channels(w, i, node, (query, key, value), "prune heads")
    if ids is None:
        return
    q, k, v = ids
    if _whole_heads(w):
        grids = [_per_head(w, x, heads) for x in (q, k, v)]
        w.union(grids[0][:, 0], grids[1][:, 0])
        w.union(grids[0][:, 0], grids[2][:, 0])
    else:
        qg, kg = _per_dim(w, q, heads), _per_dim(w, k, heads)
        if qg.shape != kg.shape:
            w.block(np.concatenate([q, k]), f"{w.where(i, node)}: Q and K head sizes differ")
            return
        w.union(qg[0], kg[0])
        _per_dim(w, v, heads)
    bias = names[3]
    if bias:
        if w.is_const(bias):
            w.use_const(i, 3, 0, np.concatenate([q, k, v]), "bias")
        else:
            w.block(np.concatenate([q, k, v]), f"{w.where(i, node)}: bias '{bias}' is not a constant")
    w.set_axes(node.output[0], {2: v})


# --------------------------------------------------------------------------- GroupQueryAttention

def rewrite_gqa(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    original = s.original(i)
    head_size = s.shape(original.input[0])[-1] // int(attribute(original, "num_heads"))
    set_attribute(node, onnx.helper.make_attribute("num_heads", int(s.new_dim(original.input[0], 2)) // head_size))
    set_attribute(node, onnx.helper.make_attribute("kv_num_heads",
                                                   int(s.new_dim(original.input[1], 2)) // head_size))


@rule("GroupQueryAttention", domain=MS, rewrite=rewrite_gqa)
def group_query_attention(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """query [B, S, N*D], key and value [B, S, Nkv*D]: a KV head and its N/Nkv query heads go together."""
    names = list(node.input) + [""] * 3
    query, key, value = names[0], names[1], names[2]
    if not key or not value:
        w.block_inputs(i, node, "packed QKV input is not supported")
        return
    held = "past key/value, attention bias, head sinks or present outputs"
    if not _unused_or_block(w, i, node, (3, 4, 10, 11), (1, 2), held):
        return
    kv_heads = int(attribute(node, "kv_num_heads"))
    ids = _qkv_channels(w, i, node, (query, key, value), "prune KV groups")
    if ids is None:
        return
    q, k, v = ids
    qg = _per_head(w, q, kv_heads)  # one row per KV group: its query heads
    kg, vg = _per_head(w, k, kv_heads), _per_head(w, v, kv_heads)
    w.union(qg[:, 0], kg[:, 0])
    w.union(qg[:, 0], vg[:, 0])
    w.set_axes(node.output[0], {2: q})


# --------------------------------------------------------------------------- RotaryEmbedding

def rewrite_rotary(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    original = s.original(i)
    heads = int(attribute(original, "num_heads", 0))
    x = original.input[0]
    if heads and len(s.shape(x)) == 3:
        head_size = s.shape(x)[2] // heads
        set_attribute(node, onnx.helper.make_attribute("num_heads", int(s.new_dim(x, 2)) // head_size))


@rule("RotaryEmbedding", domain=MS, rewrite=rewrite_rotary)
def rotary_embedding(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """Rotates pairs of dims inside each head: whole heads pass, dims inside a head cannot go."""
    x = node.input[0]
    rank = w.rank(x)
    axes = w.tracked(x)
    result = {}
    heads_axis = 2 if rank == 3 else 1  # [B, S, N*D] or [B, N, S, D]
    for axis, ids in axes.items():
        if axis != heads_axis:
            w.block(ids, f"{w.where(i, node)} rotates pairs of dims inside a head (axis {axis})")
            continue
        if rank == 3:
            heads = int(attribute(node, "num_heads", 0))
            if not heads:
                w.block(ids, f"{w.where(i, node)}: num_heads is not set; head boundaries unknown")
                continue
            _per_head(w, ids, heads)
        result[axis] = ids
    w.set_axes(node.output[0], result)
